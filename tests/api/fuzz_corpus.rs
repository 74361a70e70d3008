//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same entry points
//! the fuzz targets call, so inputs the fuzzer once found interesting keep passing in the
//! normal test run, without a fuzzer. A crash or broken property fails the test and names the
//! file. See fuzz/README.md.

use std::path::PathBuf;

use customer_profile::fuzzing;

type Entry = fn(&[u8]) -> Result<(), fuzzing::Broken>;

/// Runs every corpus file of `target` through `entry`; returns how many there were.
fn replay(target: &str, entry: Entry) -> usize {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    for f in &files {
        let data = std::fs::read(f).expect("a readable corpus file");
        if let Err(broken) = entry(&data) {
            panic!("{target}: {} breaks a property: {broken}", f.display());
        }
    }
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files.len()
}

#[test]
fn identifier_corpus_replays_clean() {
    replay("identifier", fuzzing::identifier);
}

#[test]
fn codec_corpus_replays_clean() {
    replay("codec", fuzzing::codec);
}

#[test]
fn page_token_corpus_replays_clean() {
    replay("page_token", fuzzing::page_token);
}

#[test]
fn config_corpus_replays_clean() {
    replay("config", fuzzing::config);
}

#[test]
fn request_corpus_replays_clean() {
    replay("request", fuzzing::request);
}
