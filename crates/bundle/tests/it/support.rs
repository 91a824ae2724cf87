//! Shared builders.

use kernelize_bundle::*;

pub const NOW: u64 = 1_700_000_000_000;

pub fn file(n: usize, seed: u64) -> Vec<u8> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random()).collect()
}

pub fn manifest_for(bytes: &[u8], version: u64) -> ReleaseManifest {
    let d = chunk_hashes(bytes, MIN_CHUNK_SIZE).unwrap();
    ReleaseManifest {
        channel: "stable".into(),
        version,
        kernel_id: "00112233aabbccdd".into(),
        sha256: d.sha256,
        length: d.length,
        chunk_size: d.chunk_size,
        chunk_hashes: d.chunk_hashes,
        compatibility: Compatibility {
            embedding_model: "all-MiniLM-L6-v2".into(),
            dim: 4,
            min_agent_version: "0.1.0".into(),
        },
        golden_queries: vec![
            GoldenQuery {
                text: Some("what is a kernel".into()),
                vector: None,
                k: 10,
                expected_ids: vec!["a".into(), "b".into()],
                min_overlap: 1,
                max_latency_ms: 50,
            },
            GoldenQuery {
                text: None,
                vector: Some(vec![0.5, -0.5, 0.25, 1.0]),
                k: 5,
                expected_ids: vec!["c".into()],
                min_overlap: 1,
                max_latency_ms: 20,
            },
        ],
        created_ms: NOW - 1000,
        expires_ms: NOW + 3_600_000,
    }
}

pub fn offer_for(manifest: &Envelope, kind: OfferKind) -> Offer {
    Offer {
        offer_id: "offer-1".into(),
        device_id: "device-7".into(),
        deployment_id: "dep-3".into(),
        kind,
        manifest: manifest.clone(),
        delta: None,
        expires_ms: NOW + 60_000,
        nonce: new_nonce().unwrap(),
    }
}
