//! Fleet trust objects (`crates/bundle`): envelopes, release manifests, offers, root
//! chains and deltas never panic on arbitrary bytes — both as they arrive (behind the
//! signature) and as payloads signed by the right key (what a compromised or buggy server
//! could send), so the strict parsers behind the signature are reached too.
#![no_main]
use kernelize_bundle::{
    DocKind, Envelope, Offer, ReleaseManifest, SigningKey, TrustRoot, apply_delta, verify_root_chain,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("key"))
}

fuzz_target!(|data: &[u8]| {
    let k = key();
    let p = k.public();
    let now = 1_700_000_000_000;
    let _ = Envelope::decode(data);
    let _ = ReleaseManifest::verify(data, &p, now);
    let _ = Offer::verify(data, &p, "device-1", now);
    let _ = verify_root_chain(&TrustRoot::pinned(p.clone()), &[data]);
    for kind in [DocKind::Release, DocKind::Offer, DocKind::Root] {
        if data.is_empty() {
            break;
        }
        let signed = Envelope::sign(kind, data.to_vec(), k).to_bytes();
        let _ = ReleaseManifest::verify(&signed, &p, now);
        let _ = Offer::verify(&signed, &p, "device-1", now);
        let _ = verify_root_chain(&TrustRoot::pinned(p.clone()), &[&signed, &signed]);
    }
    let base = b"kernelize fuzz delta base".repeat(8);
    let _ = apply_delta(&base, data, 1 << 20);
});
