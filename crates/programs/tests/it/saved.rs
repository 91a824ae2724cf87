//! Saved programs: round trips, identical behaviour after reloading, signatures that
//! catch any change, version checks.

use kernelize_kernel::SigningKey;
use kernelize_programs::Error;
use kernelize_programs::module::{Decode, Env};
use kernelize_programs::optimize::OptimizerSpec;
use kernelize_programs::saved::{FORMAT, SavedProgram, dataset_hash};
use kernelize_programs::signature::Values;
use serde_json::json;

use crate::optimize::{classifier, embedder, metric, model, train};

/// A compiled-looking program: demos, a KnnFewShot pool, scores.
fn saved() -> SavedProgram {
    let mut program = classifier(Decode::Generate);
    let p = &mut program.predictors_mut()[0];
    p.demos = train()[..2].to_vec();
    p.signature.instruction = "Label the word with its WordNet supersense.".into();
    let mut s = SavedProgram::new(program);
    s.optimizer = Some(OptimizerSpec::LabeledFewShot { k: 2 });
    s.metric = Some(metric());
    s.scores.insert("val".into(), 0.75);
    s.seed = 42;
    s.dataset_hash = Some(dataset_hash(&train()));
    s
}

#[test]
fn round_trips_through_text_and_files() {
    let s = saved();
    let text = s.to_json();
    assert_eq!(text, saved().to_json(), "deterministic bytes");
    assert_eq!(SavedProgram::from_json(&text, None).unwrap(), s);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    s.save(&path).unwrap();
    assert_eq!(SavedProgram::load(&path, None).unwrap(), s);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
    // The dataset hash sees order and content.
    let mut t = train();
    assert_eq!(dataset_hash(&t), dataset_hash(&train()));
    t.swap(0, 1);
    assert_ne!(dataset_hash(&t), dataset_hash(&train()));
    assert!(dataset_hash(&t).starts_with("sha256:"));
}

#[test]
fn unknown_versions_and_bad_fields_are_refused_with_where() {
    let text = saved().to_json();
    let v2 = text.replacen(&format!("\"format\": {FORMAT}"), "\"format\": 99", 1);
    let e = SavedProgram::from_json(&v2, None).unwrap_err();
    assert!(matches!(e, Error::Saved { .. }), "{e}");
    assert!(e.to_string().contains("unknown format version 99"), "{e}");
    let bad = text.replacen("\"k\": 2", "\"k\": \"two\"", 1);
    let e = SavedProgram::from_json(&bad, None).unwrap_err().to_string();
    assert!(e.contains("optimizer") && e.contains("invalid type"), "{e}");
    let bad = text.replacen("\"decode\": \"generate\"", "\"decode\": \"guess\"", 1);
    let e = SavedProgram::from_json(&bad, None).unwrap_err().to_string();
    assert!(e.contains("program") && e.contains("guess"), "{e}");
    let e = SavedProgram::from_json("{\"format\": 1", None).unwrap_err().to_string();
    assert!(e.contains("not JSON"), "{e}");
}

#[test]
fn any_change_to_a_signed_file_is_caught() {
    let key = SigningKey::generate().unwrap();
    let mut s = saved();
    s.sign(&key);
    let text = s.to_json();
    let pk = key.public();
    assert_eq!(SavedProgram::from_json(&text, Some(&pk)).unwrap(), s);
    assert_eq!(SavedProgram::from_json(&text, None).unwrap(), s, "verified against the key it names");
    // Reformatting changes nothing the signature covers.
    let compact = serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&text).unwrap()).unwrap();
    assert!(SavedProgram::from_json(&compact, Some(&pk)).is_ok());
    // Every byte of the program, changed, makes the file fail to load.
    let start = text.find("\"program\": ").unwrap() + "\"program\": ".len();
    let end = text.find("\n  \"optimizer\"").unwrap();
    let mut checked = 0;
    for i in start..end {
        let b = text.as_bytes()[i];
        if b.is_ascii_whitespace() {
            continue;
        }
        let with = match b {
            b'0'..=b'8' => b + 1,
            b'9' => b'0',
            b'a'..=b'y' | b'A'..=b'Y' => b + 1,
            b'z' | b'Z' => b - 1,
            _ => b'x',
        };
        let mut bytes = text.as_bytes().to_vec();
        bytes[i] = with;
        let Ok(tampered) = String::from_utf8(bytes) else { continue };
        for trust in [Some(&pk), None] {
            let r = SavedProgram::from_json(&tampered, trust);
            assert!(r.is_err(), "byte {i} ({:?} -> {:?}) changed and still loaded", b as char, with as char);
        }
        checked += 1;
    }
    assert!(checked > 200, "{checked}");
    // A changed score or seed is caught too, with a clear message.
    let e =
        SavedProgram::from_json(&text.replacen("\"seed\": 42", "\"seed\": 43", 1), Some(&pk)).unwrap_err().to_string();
    assert!(e.contains("does not verify"), "{e}");
    // An unsigned file when a signature is required; a file signed by another key.
    let e = SavedProgram::from_json(&saved().to_json(), Some(&pk)).unwrap_err().to_string();
    assert!(e.contains("unsigned"), "{e}");
    let other = SigningKey::generate().unwrap().public();
    let e = SavedProgram::from_json(&text, Some(&other)).unwrap_err().to_string();
    assert!(e.contains("not by the trusted key"), "{e}");
    // A signature swapped for another key's, public key and all, still fails.
    let mut forged = saved();
    forged.sign(&SigningKey::generate().unwrap());
    let forged_sig = serde_json::to_value(forged.signature.as_ref().unwrap()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["signature"] = forged_sig;
    v["seed"] = json!(7);
    let e = SavedProgram::from_json(&v.to_string(), None).unwrap_err().to_string();
    assert!(e.contains("does not verify"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_program_answers_the_same() {
    let m = model().await;
    let env = Env::new(m).with_embedder(embedder().await);
    let mut s = saved();
    // A KnnFewShot pool travels with the file.
    let knn = kernelize_programs::optimize::KnnDemos::new(train(), 2, vec!["word".into()]).unwrap();
    s.program.predictors_mut()[0].knn = Some(knn);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    s.save(&path).unwrap();
    let back = SavedProgram::load(&path, None).unwrap();
    assert_eq!(back, s);
    for w in ["sparrow", "birch", "spoon"] {
        let mut inputs = Values::new();
        inputs.insert("word".into(), json!(w));
        let a = s.program.forward(&env, &inputs).await.unwrap();
        let b = back.program.forward(&env, &inputs).await.unwrap();
        assert_eq!(a.outputs, b.outputs, "{w}");
        assert_eq!(a.trace, b.trace, "{w}");
    }
}

#[test]
fn sampling_out_of_bounds_is_refused_when_loading() {
    for (field, bad) in [("temperature", json!(9.0)), ("top_p", json!(0.0)), ("max_tokens", json!(0))] {
        let mut v: serde_json::Value = serde_json::from_str(&saved().to_json()).unwrap();
        v["program"]["sampling"][field] = bad;
        let err = SavedProgram::from_json(&v.to_string(), None).unwrap_err().to_string();
        assert!(err.contains(&format!("sampling.{field}")), "{field}: {err}");
    }
}
