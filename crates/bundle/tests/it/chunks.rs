//! Downloads checked chunk by chunk: in order, resumed, corrupted, too long.

use crate::support::*;
use kernelize_bundle::*;

fn verifier(bytes: &[u8]) -> ChunkVerifier {
    ChunkVerifier::new(&manifest_for(bytes, 1))
}

#[test]
fn file_digests_match_reader_digests() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = file(50_000, 1);
    let path = dir.path().join("k.kernel");
    fs_err::write(&path, &bytes).unwrap();
    let d = file_digests(&path, 8192).unwrap();
    assert_eq!(d, chunk_hashes(&bytes[..], 8192).unwrap());
    assert_eq!(d.chunk_hashes.len(), 7);
    let err = file_digests(&dir.path().join("missing"), 8192).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn corrupt_chunk_is_refused_and_the_stream_stays_at_its_start() {
    let bytes = file(5 * 4096 + 10, 2);
    let v = verifier(&bytes);
    assert_eq!(v.chunk_count(), 6);
    assert_eq!(v.chunk_range(5), Some(5 * 4096..5 * 4096 + 10));
    assert_eq!(v.chunk_range(6), None);
    let mut bad = bytes.clone();
    bad[2 * 4096 + 7] ^= 0x40;
    let mut s = v.stream();
    s.push(&bad[..2 * 4096]).unwrap();
    let err = s.push(&bad[2 * 4096..3 * 4096 + 1]).unwrap_err();
    assert_eq!(err.code(), "content_mismatch");
    assert!(err.to_string().contains("chunk 2"), "{err}");
    assert_eq!(s.position(), 2 * 4096, "the bad chunk is dropped");
    // Re-fetched from the position, good bytes complete the file.
    s.push(&bytes[2 * 4096..]).unwrap();
    assert_eq!(s.finish().unwrap(), Sha256::of(&bytes));
    assert!(v.check_chunk(2, &bad[2 * 4096..3 * 4096]).is_err());
    v.check_chunk(2, &bytes[2 * 4096..3 * 4096]).unwrap();
    assert!(v.check_chunk(2, &bytes[2 * 4096..3 * 4096 - 1]).is_err(), "short chunk");
    assert!(v.check_chunk(9, b"").is_err());
}

#[test]
fn resume_keeps_only_good_whole_chunks() {
    let bytes = file(6 * 4096 + 123, 3);
    let v = verifier(&bytes);
    // A partial file cut mid-chunk: the whole chunks before the cut are kept.
    let partial = &bytes[..3 * 4096 + 500];
    let mut s = v.resume(partial).unwrap();
    assert_eq!(s.position(), 3 * 4096);
    s.push(&bytes[3 * 4096..]).unwrap();
    s.finish().unwrap();
    // A partial file with a damaged chunk: kept up to it.
    let mut damaged = bytes[..5 * 4096].to_vec();
    damaged[4096 + 1] ^= 1;
    assert_eq!(v.resume(&damaged[..]).unwrap().position(), 4096);
    // A complete file (and trailing garbage past the length is never read).
    let mut long = bytes.clone();
    long.extend_from_slice(b"garbage");
    let s = v.resume(&long[..]).unwrap();
    assert_eq!(s.position(), bytes.len() as u64);
    s.finish().unwrap();
}

#[test]
fn extra_bytes_past_the_length_are_refused() {
    let bytes = file(3 * 4096, 4);
    let v = verifier(&bytes);
    let mut long = bytes.clone();
    long.push(0);
    let err = v.check_file(&long[..]).unwrap_err();
    assert!(err.to_string().contains("length"), "{err}");
    let mut s = v.stream();
    assert!(s.push(&long).is_err());
    assert_eq!(s.received(), 0, "nothing of a too-long push is taken");
    v.check_file(&bytes[..]).unwrap();
    assert!(v.check_file(&bytes[..bytes.len() - 1]).is_err(), "short file");
}

#[test]
fn whole_file_hash_is_checked_even_when_chunks_match() {
    // A manifest whose chunk hashes match but whose whole hash does not (a lying server)
    // is caught at the end.
    let bytes = file(2 * 4096, 5);
    let mut m = manifest_for(&bytes, 1);
    m.sha256 = Sha256::of(b"something else");
    let v = ChunkVerifier::new(&m);
    let mut s = v.stream();
    s.push(&bytes).unwrap();
    assert!(s.finish().unwrap_err().to_string().contains("SHA-256"));
}
