//! Release manifests, offers and root documents: round trips, tampering, expiry, binding.

use crate::support::*;
use kernelize_bundle::*;
use proptest::prelude::*;

fn keys() -> (SigningKey, PublicKey) {
    let k = SigningKey::generate().unwrap();
    let p = k.public();
    (k, p)
}

#[test]
fn manifest_round_trip() {
    let (k, p) = keys();
    let m = manifest_for(&file(10_000, 1), 3);
    let bytes = m.sign(&k).unwrap().to_bytes();
    assert_eq!(ReleaseManifest::verify(&bytes, &p, NOW).unwrap(), m);
}

#[test]
fn every_flipped_bit_of_a_signed_manifest_is_refused() {
    let (k, p) = keys();
    let bytes = manifest_for(&file(9_000, 2), 1).sign(&k).unwrap().to_bytes();
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x20] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            assert!(ReleaseManifest::verify(&b, &p, NOW).is_err(), "flip {bit:#x} at byte {i} accepted");
        }
    }
}

#[test]
fn tampered_payload_signature_or_key_id_is_refused() {
    let (k, p) = keys();
    let (other, other_pub) = keys();
    let env = manifest_for(&file(5_000, 3), 4).sign(&k).unwrap();

    // Payload edited (version 4 → 9): same shape, signature no longer covers it.
    let mut e = env.clone();
    let text = String::from_utf8(e.payload.clone()).unwrap().replace("\"version\":4", "\"version\":9");
    assert_ne!(text.as_bytes(), &env.payload[..]);
    e.payload = text.into_bytes();
    let err = ReleaseManifest::verify(&e.to_bytes(), &p, NOW).unwrap_err();
    assert_eq!(err.code(), "bad_signature", "{err}");

    // Signature edited.
    let mut e = env.clone();
    e.sig[10] ^= 1;
    assert_eq!(ReleaseManifest::verify(&e.to_bytes(), &p, NOW).unwrap_err().code(), "bad_signature");

    // Key id relabelled to the verifier's key: the signature still is not that key's.
    let mut e = env.clone();
    e.key_id = other_pub.key_id();
    assert_eq!(ReleaseManifest::verify(&e.to_bytes(), &other_pub, NOW).unwrap_err().code(), "bad_signature");

    // Signed by another key altogether.
    let foreign = manifest_for(&file(5_000, 3), 4).sign(&other).unwrap().to_bytes();
    let err = ReleaseManifest::verify(&foreign, &p, NOW).unwrap_err();
    assert!(err.to_string().contains(&other_pub.key_id()), "{err}");

    // A manifest's signature is no offer's or root document's.
    let mut e = env.clone();
    e.kind = DocKind::Offer;
    assert!(ReleaseManifest::verify(&e.to_bytes(), &p, NOW).is_err());
}

#[test]
fn expired_manifest_is_refused() {
    let (k, p) = keys();
    let m = manifest_for(&file(5_000, 4), 1);
    let bytes = m.sign(&k).unwrap().to_bytes();
    assert!(ReleaseManifest::verify(&bytes, &p, m.expires_ms - 1).is_ok());
    let err = ReleaseManifest::verify(&bytes, &p, m.expires_ms).unwrap_err();
    assert_eq!(err.code(), "expired", "{err}");
}

/// Signs a payload as-is, without the checks `sign` makes: what a malicious or buggy
/// server could send.
fn raw_signed(kind: DocKind, value: &serde_json::Value, key: &SigningKey) -> Vec<u8> {
    Envelope::sign(kind, serde_json::to_vec(value).unwrap(), key).to_bytes()
}

#[test]
fn malformed_manifests_name_the_field() {
    let (k, p) = keys();
    let good = serde_json::to_value(manifest_for(&file(10_000, 5), 2)).unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("chunk_hashes", Box::new(|v| v["chunk_hashes"].as_array_mut().unwrap().pop().map(drop).unwrap_or(()))),
        ("chunk_size", Box::new(|v| v["chunk_size"] = 5000.into())),
        ("chunk_size", Box::new(|v| v["chunk_size"] = (1u64 << 30).into())),
        ("length", Box::new(|v| v["length"] = 0.into())),
        ("channel", Box::new(|v| v["channel"] = "../etc".into())),
        ("kernel_id", Box::new(|v| v["kernel_id"] = "a/b".into())),
        ("version", Box::new(|v| v["version"] = 0.into())),
        ("expires_ms", Box::new(|v| v["expires_ms"] = v["created_ms"].clone())),
        ("compatibility.dim", Box::new(|v| v["compatibility"]["dim"] = "x".into())),
        ("compatibility.min_agent_version", Box::new(|v| v["compatibility"]["min_agent_version"] = "1.2".into())),
        ("compatibility.embedding_model", Box::new(|v| v["compatibility"]["embedding_model"] = "".into())),
        ("golden_queries[1].vector", Box::new(|v| v["golden_queries"][1]["vector"] = serde_json::json!([1.0]))),
        ("golden_queries[0].k", Box::new(|v| v["golden_queries"][0]["k"] = 0.into())),
        ("golden_queries[0].min_overlap", Box::new(|v| v["golden_queries"][0]["min_overlap"] = 3.into())),
        ("golden_queries[0].max_latency_ms", Box::new(|v| v["golden_queries"][0]["max_latency_ms"] = 0.into())),
        ("golden_queries[0]", Box::new(|v| v["golden_queries"][0]["vector"] = serde_json::json!([1, 2, 3, 4]))),
        ("golden_queries[0].script", Box::new(|v| v["golden_queries"][0]["script"] = "rm -rf /".into())),
        ("sha256", Box::new(|v| v["sha256"] = "00".into())),
        ("hooks", Box::new(|v| v["hooks"] = serde_json::json!({"post_install": "sh"}))),
        (
            "golden_queries",
            Box::new(|v| v["golden_queries"] = serde_json::json!(vec![v["golden_queries"][0].clone(); 65])),
        ),
    ];
    for (field, edit) in cases {
        let mut v = good.clone();
        edit(&mut v);
        let err = ReleaseManifest::verify(&raw_signed(DocKind::Release, &v, &k), &p, NOW).unwrap_err();
        assert_eq!(err.code(), "malformed", "{field}: {err}");
        match &err {
            BundleError::Malformed { field: got, .. } => assert_eq!(got, field, "{err}"),
            e => panic!("{field}: {e}"),
        }
        // And the server refuses to sign such a manifest in the first place.
        if let Ok(m) = serde_json::from_value::<ReleaseManifest>(v) {
            assert!(m.sign(&k).is_err(), "{field}: signed");
        }
    }
}

#[test]
fn offer_round_trip_and_device_binding() {
    let (k, p) = keys();
    let menv = manifest_for(&file(8_000, 6), 5).sign(&k).unwrap();
    let mut offer = offer_for(&menv, OfferKind::Install);
    offer.delta = Some(DeltaOffer { from_sha256: Sha256::of(b"old"), sha256: Sha256::of(b"delta"), length: 123 });
    let bytes = offer.sign(&k).unwrap().to_bytes();
    let v = Offer::verify(&bytes, &p, "device-7", NOW).unwrap();
    assert_eq!(v.offer, offer);
    assert_eq!(v.manifest.version, 5);
    v.admits(None).unwrap();
    v.admits(Some(4)).unwrap();

    let err = Offer::verify(&bytes, &p, "device-8", NOW).unwrap_err();
    assert_eq!(err.code(), "wrong_device", "{err}");
    assert!(err.to_string().contains("device-7") && err.to_string().contains("device-8"), "{err}");

    let err = Offer::verify(&bytes, &p, "device-7", offer.expires_ms).unwrap_err();
    assert_eq!(err.code(), "expired", "{err}");
    assert!(err.to_string().starts_with("offer"), "{err}");
}

#[test]
fn install_of_a_seen_version_needs_a_revert_order() {
    let (k, p) = keys();
    let menv = manifest_for(&file(8_000, 7), 5).sign(&k).unwrap();
    let install =
        Offer::verify(&offer_for(&menv, OfferKind::Install).sign(&k).unwrap().to_bytes(), &p, "device-7", NOW).unwrap();
    for seen in [5, 6] {
        let err = install.admits(Some(seen)).unwrap_err();
        assert_eq!(err.code(), "downgrade", "{err}");
    }
    let revert =
        Offer::verify(&offer_for(&menv, OfferKind::Revert).sign(&k).unwrap().to_bytes(), &p, "device-7", NOW).unwrap();
    revert.admits(Some(6)).unwrap();
    // The kind is signed: relabelling an install as a revert breaks the signature.
    let mut env = Envelope::decode(&offer_for(&menv, OfferKind::Install).sign(&k).unwrap().to_bytes()).unwrap();
    let text = String::from_utf8(env.payload.clone()).unwrap().replace("\"install\"", "\"revert\"");
    env.payload = text.into_bytes();
    assert_eq!(Offer::verify(&env.to_bytes(), &p, "device-7", NOW).unwrap_err().code(), "bad_signature");
}

#[test]
fn offer_with_a_bad_manifest_is_refused() {
    let (k, p) = keys();
    let (other, _) = keys();
    // Manifest signed by another key, offer by the release key.
    let foreign = manifest_for(&file(8_000, 8), 5).sign(&other).unwrap();
    let err = Offer::verify(&offer_for(&foreign, OfferKind::Install).sign(&k).unwrap().to_bytes(), &p, "device-7", NOW)
        .unwrap_err();
    assert_eq!(err.code(), "bad_signature", "{err}");
    assert!(err.to_string().starts_with("release manifest"), "{err}");
    // Manifest expired while the offer is not.
    let mut m = manifest_for(&file(8_000, 8), 5);
    m.expires_ms = NOW - 1;
    m.created_ms = NOW - 10;
    let env = m.sign(&k).unwrap();
    let err = Offer::verify(&offer_for(&env, OfferKind::Install).sign(&k).unwrap().to_bytes(), &p, "device-7", NOW)
        .unwrap_err();
    assert_eq!(err.code(), "expired");
    assert!(err.to_string().starts_with("release manifest"), "{err}");
    // A delta "from" the release itself.
    let good = manifest_for(&file(8_000, 8), 5);
    let mut o = offer_for(&good.sign(&k).unwrap(), OfferKind::Install);
    o.delta = Some(DeltaOffer { from_sha256: good.sha256, sha256: Sha256::of(b"d"), length: 10 });
    let err = Offer::verify(&o.sign(&k).unwrap().to_bytes(), &p, "device-7", NOW).unwrap_err();
    assert!(err.to_string().contains("delta.from_sha256"), "{err}");
    // Offer fields are checked before signing and after.
    let mut o = offer_for(&good.sign(&k).unwrap(), OfferKind::Install);
    o.device_id = "../../etc".into();
    assert!(o.sign(&k).unwrap_err().to_string().contains("device_id"));
    let v = serde_json::to_value(&o).unwrap();
    let err = Offer::verify(&raw_signed(DocKind::Offer, &v, &k), &p, "../../etc", NOW).unwrap_err();
    assert!(err.to_string().contains("device_id"), "{err}");
}

fn rotate(version: u64, from: &SigningKey, to: &PublicKey) -> Vec<u8> {
    RootDocument { version, release_key: to.clone(), created_ms: NOW }.sign(from).unwrap().to_bytes()
}

#[test]
fn root_chain_rotates_keys() {
    let (k0, p0) = keys();
    let (k1, p1) = keys();
    let (k2, p2) = keys();
    let d1 = rotate(1, &k0, &p1);
    let d2 = rotate(2, &k1, &p2);
    let pinned = TrustRoot::pinned(p0.clone());
    assert_eq!(verify_root_chain(&pinned, &[] as &[Vec<u8>]).unwrap(), pinned);
    let now = verify_root_chain(&pinned, &[&d1, &d2]).unwrap();
    assert_eq!(now, TrustRoot { version: 2, key: p2.clone() });
    // A device already at version 1 walks the same list (history first).
    assert_eq!(verify_root_chain(&TrustRoot { version: 1, key: p1.clone() }, &[&d1, &d2]).unwrap(), now);
    assert_eq!(verify_root_chain(&now, &[&d1, &d2]).unwrap(), now);

    // After the rotation, the old release key is refused.
    let old = manifest_for(&file(5_000, 9), 9).sign(&k0).unwrap().to_bytes();
    assert_eq!(ReleaseManifest::verify(&old, &now.key, NOW).unwrap_err().code(), "bad_signature");
    let new = manifest_for(&file(5_000, 9), 9).sign(&k2).unwrap().to_bytes();
    ReleaseManifest::verify(&new, &now.key, NOW).unwrap();
}

#[test]
fn root_chain_with_a_skipped_version_is_refused() {
    let (k0, p0) = keys();
    let (k1, p1) = keys();
    let (k2, p2) = keys();
    let (_, p3) = keys();
    let d1 = rotate(1, &k0, &p1);
    let d3 = rotate(3, &k2, &p3);
    let err = verify_root_chain(&TrustRoot::pinned(p0.clone()), &[&d1, &d3]).unwrap_err();
    assert!(matches!(err, BundleError::RootChain { version: 3, .. }), "{err}");
    assert!(err.to_string().contains("version 2 is missing"), "{err}");
    // Starting past the pinned version.
    let d2 = rotate(2, &k1, &p2);
    let err = verify_root_chain(&TrustRoot::pinned(p0), &[&d2]).unwrap_err();
    assert!(err.to_string().contains("version 1 is missing"), "{err}");
}

#[test]
fn root_document_signed_by_another_key_is_refused() {
    let (_k0, p0) = keys();
    let (k1, p1) = keys();
    let (evil, _) = keys();
    // Signed by a stranger.
    let err = verify_root_chain(&TrustRoot::pinned(p0.clone()), &[rotate(1, &evil, &p1)]).unwrap_err();
    assert_eq!(err.code(), "root_chain", "{err}");
    assert!(err.to_string().contains(&p0.key_id()), "{err}");
    // Signed by the new key itself.
    let err =
        verify_root_chain(&TrustRoot::pinned(p0.clone()), &[rotate(1, &k1, &SigningKey::generate().unwrap().public())])
            .unwrap_err();
    assert_eq!(err.code(), "root_chain", "{err}");
    // Another kind of document signed by the right key.
    let (k0b, p0b) = keys();
    let offer_env = Envelope::sign(DocKind::Offer, br#"{"version":1}"#.to_vec(), &k0b).to_bytes();
    assert!(verify_root_chain(&TrustRoot::pinned(p0b), &[offer_env]).is_err());
}

#[test]
fn root_chain_fork_is_refused() {
    let (k0, p0) = keys();
    let (k1, p1) = keys();
    let (_, p1b) = keys();
    let (_, p2) = keys();
    let d1 = rotate(1, &k0, &p1);
    let d1b = rotate(1, &k0, &p1b);
    let pinned = TrustRoot::pinned(p0.clone());
    // Two version-1 documents, both signed by the pinned key.
    let err = verify_root_chain(&pinned, &[&d1, &d1b]).unwrap_err();
    assert!(err.to_string().contains("fork"), "{err}");
    // A device on the first branch shown the second.
    let on_first = verify_root_chain(&pinned, &[&d1]).unwrap();
    let err = verify_root_chain(&on_first, &[&d1b]).unwrap_err();
    assert!(err.to_string().contains("fork"), "{err}");
    // Out of order.
    let d2 = rotate(2, &k1, &p2);
    assert!(verify_root_chain(&pinned, &[&d2, &d1]).is_err());
    // A rotation that keeps the key (crafted: `sign` refuses it).
    let same = Envelope::sign(
        DocKind::Root,
        serde_json::to_vec(&RootDocument { version: 1, release_key: p0.clone(), created_ms: NOW }).unwrap(),
        &k0,
    )
    .to_bytes();
    assert!(verify_root_chain(&pinned, &[same]).unwrap_err().to_string().contains("does not change"));
    assert!(RootDocument { version: 1, release_key: p0, created_ms: NOW }.sign(&k0).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let key = PublicKey::from_bytes([7; 32]);
        let _ = Envelope::decode(&bytes);
        prop_assert!(ReleaseManifest::verify(&bytes, &key, NOW).is_err());
        prop_assert!(Offer::verify(&bytes, &key, "d", NOW).is_err());
        prop_assert!(verify_root_chain(&TrustRoot::pinned(key), &[&bytes]).is_err());
    }

    #[test]
    fn envelope_like_text_never_verifies(
        kind in prop_oneof![Just("release".to_owned()), Just("root".to_owned()), Just("offer".to_owned()), "[a-z]{0,8}"],
        key_id in "[0-9a-f]{14,18}",
        payload in "[A-Za-z0-9+/=]{0,64}",
        sig in "[A-Za-z0-9+/=]{0,100}",
        extra in proptest::option::of("[a-z]{1,6}"),
    ) {
        let extra = extra.map(|e| format!(r#","{e}":1"#)).unwrap_or_default();
        let text = format!(r#"{{"format":"kernelize-signed/1","kind":"{kind}","key_id":"{key_id}","payload":"{payload}","sig":"{sig}"{extra}}}"#);
        let key = PublicKey::from_bytes([9; 32]);
        if let Ok(env) = Envelope::decode(text.as_bytes()) {
            prop_assert_eq!(env.sig.len(), 64);
            prop_assert_eq!(Envelope::decode(&env.to_bytes()).unwrap(), env.clone());
            prop_assert!(env.open(env.kind, &key).is_err());
        }
    }

    #[test]
    fn mutated_signed_envelopes_never_verify(at in 0usize..4096, with in any::<u8>()) {
        let k = SigningKey::from_pkcs8(&ring_doc()).unwrap();
        let bytes = manifest_for(&file(6_000, 10), 2).sign(&k).unwrap().to_bytes();
        let mut b = bytes.clone();
        let i = at % b.len();
        prop_assume!(b[i] != with);
        b[i] = with;
        prop_assert!(ReleaseManifest::verify(&b, &k.public(), NOW).is_err());
    }
}

fn ring_doc() -> Vec<u8> {
    static DOC: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref().to_vec()
    })
    .clone()
}

#[test]
fn the_largest_manifest_fits_in_an_offer() {
    let (k, p) = keys();
    let mut m = manifest_for(&file(100, 12), 1);
    m.chunk_size = MAX_CHUNK_SIZE;
    m.length = MAX_CHUNKS * MAX_CHUNK_SIZE;
    m.chunk_hashes = (0..MAX_CHUNKS).map(|i| Sha256::of(&i.to_le_bytes())).collect();
    m.compatibility.dim = 384;
    m.golden_queries = (0..MAX_GOLDEN_QUERIES)
        .map(|i| GoldenQuery {
            text: None,
            vector: Some((0..384).map(|j| ((i * 384 + j) as f32 * 0.618).sin()).collect()),
            k: 10,
            expected_ids: (0..10).map(|j| format!("doc-{i}-{j}")).collect(),
            min_overlap: 5,
            max_latency_ms: 100,
        })
        .collect();
    let env = m.sign(&k).unwrap();
    let offer = offer_for(&env, OfferKind::Install).sign(&k).unwrap().to_bytes();
    assert!(offer.len() <= MAX_ENVELOPE_BYTES, "{} bytes", offer.len());
    let v = Offer::verify(&offer, &p, "device-7", NOW).unwrap();
    assert_eq!(v.manifest, m);
    // One chunk more is refused, and so is a manifest whose JSON is too large.
    let mut more = m.clone();
    more.chunk_size = MIN_CHUNK_SIZE;
    more.length = MAX_CHUNKS * MIN_CHUNK_SIZE + 1;
    more.chunk_hashes.push(Sha256::of(b"x"));
    let err = more.sign(&k).unwrap_err();
    assert!(matches!(&err, BundleError::Malformed { field, .. } if field == "chunk_size"), "{err}");
    m.compatibility.dim = 4096;
    for q in &mut m.golden_queries {
        q.vector = Some(vec![0.123_456_79; 4096]);
    }
    let err = m.sign(&k).unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
}
