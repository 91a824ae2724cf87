//! `GET /v1/collections/{name}/map`: shape, bounds, determinism, the projection keeping
//! clusters apart, errors and authorization; and the console's map view in Chromium
//! (`console-tests/map.test.mjs`).

use crate::browser::{artifacts, console_tests, run_node};
use crate::common::{ADMIN_KEY, Backend, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const DIM: usize = 16;
const LABELS: [&str; 3] = ["noun", "verb", "adjective"];

/// 3 × `per` records in three well separated clusters, labelled by `metadata.pos`.
async fn clustered(ts: &TestServer, name: &str, per: usize) {
    ts.create_collection(name, DIM).await;
    let mut x = 0x9e37_79b9u32;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        (x as f32 / u32::MAX as f32 - 0.5) * 0.2
    };
    let mut records = Vec::new();
    for (c, label) in LABELS.iter().enumerate() {
        for i in 0..per {
            let v: Vec<f32> = (0..DIM).map(|d| if d % 3 == c { 1.0 } else { 0.0 } + noise()).collect();
            records.push(json!({"id": format!("{label}-{i:04}"), "vector": v, "text": format!("a {label} number {i}"),
                "metadata": {"pos": label, "i": i, "nested": {"parity": if i % 2 == 0 { "even" } else { "odd" }}}}));
        }
    }
    for chunk in records.chunks(500) {
        let (s, v) = ts.post(ADMIN_KEY, &format!("/v1/collections/{name}/records"), json!({"records": chunk})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

fn ids(map: &Value) -> Vec<String> {
    map["points"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_is_a_bounded_deterministic_projection_that_keeps_clusters_apart() {
    let ts = TestServer::start(Backend::Sqlite).await;
    clustered(&ts, "docs", 400).await;
    let (s, m) = ts.get(ADMIN_KEY, "/v1/collections/docs/map?sample=300&color_by=pos&seed=7").await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(
        (m["collection"].as_str(), m["examined"].as_u64(), m["seed"].as_u64()),
        (Some("docs"), Some(1200), Some(7))
    );
    assert_eq!((m["truncated"].as_bool(), m["color_by"].as_str()), (Some(false), Some("pos")));
    let points = m["points"].as_array().unwrap();
    assert_eq!(points.len(), 300);
    let got = ids(&m);
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(got, sorted, "unique ids in id order");
    let explained: Vec<f64> = m["explained"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(
        explained[0] >= explained[1] && explained[1] > 0.0 && explained[0] + explained[1] <= 1.0 + 1e-4,
        "{explained:?}"
    );
    // Three clusters in 16 dimensions span a plane: the first two components hold most of it.
    assert!(explained[0] + explained[1] > 0.8, "{explained:?}");
    let mut by_label: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for p in points {
        let label = p["value"].as_str().unwrap();
        assert!(p["id"].as_str().unwrap().starts_with(label), "{p}");
        assert!(p["text"].as_str().unwrap().starts_with("a "), "{p}");
        let (x, y) = (p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap());
        assert!(x.is_finite() && y.is_finite());
        by_label.entry(LABELS.iter().find(|l| **l == label).unwrap()).or_default().push((x, y));
    }
    assert_eq!(by_label.len(), 3, "every cluster is sampled");
    // Each cluster's centroid is farther from the others than its points are from it.
    let centroid = |v: &[(f64, f64)]| {
        let n = v.len() as f64;
        (v.iter().map(|p| p.0).sum::<f64>() / n, v.iter().map(|p| p.1).sum::<f64>() / n)
    };
    let dist = |a: (f64, f64), b: (f64, f64)| ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt();
    let cs: Vec<(f64, f64)> = by_label.values().map(|v| centroid(v)).collect();
    let spread =
        by_label.values().zip(&cs).map(|(v, c)| v.iter().map(|p| dist(*p, *c)).fold(0.0, f64::max)).fold(0.0, f64::max);
    for i in 0..3 {
        for j in i + 1..3 {
            assert!(dist(cs[i], cs[j]) > 2.0 * spread, "clusters {i} and {j} overlap: {cs:?}, spread {spread}");
        }
    }

    // Deterministic: the same answer again; another seed draws another sample.
    let (_, again) = ts.get(ADMIN_KEY, "/v1/collections/docs/map?sample=300&color_by=pos&seed=7").await;
    assert_eq!(again, m);
    let (_, other) = ts.get(ADMIN_KEY, "/v1/collections/docs/map?sample=300&color_by=pos&seed=8").await;
    let (a, b): (BTreeSet<String>, BTreeSet<String>) =
        (ids(&m).into_iter().collect(), ids(&other).into_iter().collect());
    assert!(a.intersection(&b).count() < 200, "seeds 7 and 8 drew nearly the same sample");
    // ... and the same sample after compaction-free rewrites of unrelated records.
    let (s, v) = ts
        .post(
            ADMIN_KEY,
            "/v1/collections/docs/records",
            json!({"records": [{"id": "zz-extra", "vector": vec![5.0f32; DIM]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, with_extra) = ts.get(ADMIN_KEY, "/v1/collections/docs/map?sample=300&seed=7").await;
    let c: BTreeSet<String> = ids(&with_extra).into_iter().collect();
    assert!(a.symmetric_difference(&c).count() <= 2, "one new record changes at most one member of the sample");
    assert!(with_extra["points"][0].get("value").is_none() && with_extra.get("color_by").is_none());

    // Defaults, a sample larger than the collection, nested fields and the snippet bound.
    let (_, all) = ts.get(ADMIN_KEY, "/v1/collections/docs/map?sample=5000&color_by=nested.parity").await;
    assert_eq!(all["points"].as_array().unwrap().len(), 1201);
    let values: BTreeSet<String> = all["points"].as_array().unwrap().iter().map(|p| p["value"].to_string()).collect();
    assert_eq!(values, ["\"even\"", "\"odd\"", "null"].map(String::from).into_iter().collect());
    let (_, dflt) = ts.get(ADMIN_KEY, "/v1/collections/docs/map").await;
    assert_eq!(dflt["points"].as_array().unwrap().len(), 1201.min(kernelize_server::map::DEFAULT_SAMPLE));

    // Errors: bounds, an unknown field, a bad field path, a missing collection.
    for (q, what) in [
        ("sample=0", "sample"),
        ("sample=5001", "sample"),
        ("sample=x", "query"),
        ("color_by=nope", "color_by"),
        ("color_by=a..b", "color_by"),
    ] {
        let (s, v) = ts.get(ADMIN_KEY, &format!("/v1/collections/docs/map?{q}")).await;
        assert_eq!((s, v["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{q}: {v}");
        assert!(v["message"].as_str().unwrap().starts_with(what), "{q}: {v}");
    }
    let (s, v) = ts.get(ADMIN_KEY, "/v1/collections/nope/map").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // An empty collection maps to no points.
    ts.create_collection("empty", 4).await;
    let (s, v) = ts.get(ADMIN_KEY, "/v1/collections/empty/map?color_by=pos").await;
    assert_eq!((s, v["points"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{v}");

    // Authorization: a reader of docs may; a reader scoped to another collection may not.
    let reader = ts.key("reader", Some(vec!["docs"])).await;
    assert_eq!(ts.get(&reader, "/v1/collections/docs/map?sample=10").await.0, StatusCode::OK);
    let outsider = ts.key("reader", Some(vec!["empty"])).await;
    let (s, v) = ts.get(&outsider, "/v1/collections/docs/map?sample=10").await;
    assert_eq!((s, v["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{v}");
    assert!(v.get("points").is_none());
    let (s, _) = ts.call(None, reqwest::Method::GET, "/v1/collections/docs/map", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    ts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_in_chromium() {
    let dir = console_tests();
    let ts = TestServer::start(Backend::Sqlite).await;
    clustered(&ts, "words", 200).await;
    let reader = ts.key("reader", Some(vec!["words"])).await;
    let out = artifacts("map");
    let (base, out2) = (ts.base.clone(), out.clone());
    let (ok, stderr) = tokio::task::spawn_blocking(move || {
        let args = ["map.test.mjs".as_ref(), base.as_ref(), reader.as_ref(), out2.as_os_str()];
        run_node(&dir, &args, Duration::from_secs(180))
    })
    .await
    .unwrap();
    assert!(ok, "the map browser test failed (screenshots in {}):\n{stderr}", out.display());
    eprintln!("{stderr}");
    assert!(out.join("01-map-picker.png").exists());
    ts.shutdown().await;
}
