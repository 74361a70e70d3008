//! What one key costs sled 0.34 on this machine, in the shape the service writes: batches of
//! new keys that start with one of `--profiles` random 16-byte profile ids (as in every
//! profile-keyed tree), spread over `--written-trees` of the `--trees` trees, each batch applied
//! as one transaction over all the trees and then flushed, the way the group-commit flusher
//! applies its gathered commits (`apply_gathered` in `src/store/sled_store.rs`). For comparison
//! the same batches go to a single tree as a `sled::Batch` (no transactional read of each key's
//! old value). It is a best case for the service: keys are only inserted (commits also overwrite
//! and remove), and the default prefill fits in sled's cache.
//!
//! An import line writes about 87 keys, a RecordInteraction about 7 (ARCHITECTURE.md, "Where the
//! bytes and the write time go"), so the per-key figure bounds both from below.
//!
//! `sled-cost --dir /tmp/sled-cost` (it makes and removes `transaction/` and `batch/` in it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

#[derive(Parser)]
#[command(about = "Measures sled's cost per key for the service's write shape")]
struct Args {
    /// Scratch directory: `transaction/` and `batch/` are made in it and removed at the end.
    #[arg(long)]
    dir: PathBuf,
    /// Trees in each transaction (the service has 21).
    #[arg(long, default_value_t = 21)]
    trees: usize,
    /// Trees the keys of a batch are spread over (a RecordInteraction writes about 7).
    #[arg(long, default_value_t = 8)]
    written_trees: usize,
    /// Keys already in the store before the measured batches.
    #[arg(long, default_value_t = 240_000)]
    prefill: usize,
    /// Keys per batch (one flush each).
    #[arg(long, default_value_t = 120)]
    batch: usize,
    /// Measured batches per variant.
    #[arg(long, default_value_t = 2_000)]
    batches: usize,
    /// Value size in bytes (an encrypted interaction is about 150).
    #[arg(long, default_value_t = 150)]
    value_bytes: usize,
    /// Distinct profile ids the keys start with.
    #[arg(long, default_value_t = 10_000)]
    profiles: u64,
}

/// xorshift64: the same keys on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

type Batch = Vec<(usize, Vec<u8>)>;

fn batches(rng: &mut Rng, a: &Args, profiles: &[[u8; 16]], n: usize) -> Vec<Batch> {
    (0..n)
        .map(|_| {
            (0..a.batch)
                .map(|i| {
                    let t = i % a.written_trees;
                    let mut k = Vec::with_capacity(25);
                    // The tree's tag keeps keys distinct in the single-tree variant.
                    k.push(t as u8);
                    let p = (rng.next() % profiles.len() as u64) as usize;
                    k.extend_from_slice(&profiles[p]);
                    k.extend_from_slice(&rng.next().to_be_bytes());
                    (t, k)
                })
                .collect()
        })
        .collect()
}

struct Timing {
    apply: Duration,
    flush: Duration,
    keys: usize,
}

impl Timing {
    fn per_key_us(&self) -> f64 {
        self.apply.as_secs_f64() * 1e6 / self.keys as f64
    }
}

fn run(a: &Args, transactional: bool) -> Result<Timing> {
    let dir = a.dir.join(if transactional {
        "transaction"
    } else {
        "batch"
    });
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    let db = sled::Config::new()
        .path(&dir)
        .flush_every_ms(None)
        .open()
        .context("opening sled")?;
    let trees: Vec<sled::Tree> = (0..a.trees)
        .map(|i| db.open_tree(format!("t{i}")))
        .collect::<sled::Result<_>>()?;
    let single = db.open_tree("single")?;
    let value = vec![0xA5u8; a.value_bytes];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let profiles: Vec<[u8; 16]> = (0..a.profiles.max(1))
        .map(|_| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&rng.next().to_be_bytes());
            id[8..].copy_from_slice(&rng.next().to_be_bytes());
            id
        })
        .collect();
    let apply = |b: &Batch| -> Result<()> {
        if transactional {
            trees
                .as_slice()
                .transaction(|txs| {
                    for (t, k) in b {
                        txs[*t].insert(k.as_slice(), value.as_slice())?;
                    }
                    Ok::<(), ConflictableTransactionError<()>>(())
                })
                .map_err(|e| anyhow::anyhow!("transaction: {e:?}"))?;
        } else {
            let mut batch = sled::Batch::default();
            for (_, k) in b {
                batch.insert(k.as_slice(), value.as_slice());
            }
            single.apply_batch(batch)?;
        }
        Ok(())
    };
    for b in batches(&mut rng, a, &profiles, a.prefill / a.batch.max(1)) {
        apply(&b)?;
    }
    db.flush()?;
    let measured = batches(&mut rng, a, &profiles, a.batches);
    let (mut applying, mut flushing) = (Duration::ZERO, Duration::ZERO);
    for b in &measured {
        let t = Instant::now();
        apply(b)?;
        let f = Instant::now();
        db.flush()?;
        applying += f - t;
        flushing += f.elapsed();
    }
    drop(db);
    std::fs::remove_dir_all(&dir).ok();
    Ok(Timing {
        apply: applying,
        flush: flushing,
        keys: a.batches * a.batch,
    })
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.trees == 0 || a.trees > 255 || a.written_trees == 0 || a.written_trees > a.trees {
        bail!("--trees must be 1 to 255 and --written-trees 1 to --trees");
    }
    if a.batch == 0 || a.batches == 0 {
        bail!("--batch and --batches must be at least 1");
    }
    std::fs::create_dir_all(&a.dir)?;
    println!(
        "sled 0.34: {} keys in batches of {} over {} of {} trees, {} keys prefilled, {}-byte values",
        a.batches * a.batch,
        a.batch,
        a.written_trees,
        a.trees,
        a.prefill,
        a.value_bytes
    );
    for (name, transactional) in [
        ("transaction over every tree (as the flusher applies)", true),
        ("single-tree sled::Batch", false),
    ] {
        let t = run(&a, transactional)?;
        println!(
            "{name}: {:.2} us per key applied ({:.0} keys/s on one core), flushes {:.2} ms each",
            t.per_key_us(),
            1e6 / t.per_key_us(),
            t.flush.as_secs_f64() * 1e3 / a.batches as f64
        );
    }
    std::fs::remove_dir(&a.dir).ok();
    Ok(())
}
