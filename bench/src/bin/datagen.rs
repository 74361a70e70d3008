//! `datagen`: writes realistic customers in the NDJSON format of `customer-profile import`
//! (one customer a line), deterministic for a seed, fast enough for a million profiles.
//!
//! Identifier values are derived from the profile's number, so they are unique at any scale
//! without remembering them; everything else comes from a seeded ChaCha stream read in one
//! fixed order, so the same flags give byte-identical output.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use customer_profile::domain::time::civil_from_days;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Writes N customers as import NDJSON: names, UK cities and postcodes, genders, birth dates,
/// unique emails derived from names, E.164 phones, loyalty cards, device ids, a CRM id,
/// consents, preferences and interactions over the two years before --now (purchases with
/// products and amounts, support calls, complaints with open and closed cases, campaign
/// messages with message keys, bill payments).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// How many customers (lines).
    #[arg(long)]
    profiles: u64,
    /// Seed: the same seed and flags give byte-identical output.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Average interactions per customer (each gets 0 to twice this many).
    #[arg(long, default_value_t = 10)]
    interactions_per_profile: u32,
    /// Output file, or - for standard output.
    #[arg(long, default_value = "-")]
    out: PathBuf,
    /// Also write a sample of identifiers that exist, one per line as KIND<TAB>VALUE (KIND as
    /// in the import format: EMAIL, PHONE, LOYALTY_CARD, DEVICE_ID), for load generators.
    #[arg(long)]
    identifiers_out: Option<PathBuf>,
    /// Sample the identifiers of every k-th customer.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
    /// The end of the two years the interactions fall in (RFC 3339, UTC, whole seconds);
    /// fixed by default so output does not depend on the day it is generated.
    #[arg(long, default_value = "2026-11-01T00:00:00Z")]
    now: String,
}

const GIVEN_FEMALE: &[&str] = &[
    "Olivia", "Amelia", "Isla", "Ava", "Mia", "Ivy", "Lily", "Isabella", "Rosie", "Sophia",
    "Grace", "Freya", "Florence", "Willow", "Evie", "Poppy", "Ella", "Emily", "Sophie", "Ann",
    "Margaret", "Susan", "Helen", "Priya", "Aisha", "Fatima", "Zara", "Chloe", "Hannah", "Ruth",
];
const GIVEN_MALE: &[&str] = &[
    "Oliver", "George", "Noah", "Arthur", "Muhammad", "Leo", "Harry", "Oscar", "Archie", "Henry",
    "Theodore", "Freddie", "Jack", "Charlie", "Thomas", "James", "William", "David", "John",
    "Michael", "Peter", "Raj", "Arjun", "Kwame", "Daniel", "Samuel", "Joseph", "Owen", "Rhys",
    "Callum",
];
const FAMILY: &[&str] = &[
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas",
    "Johnson", "Roberts", "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes",
    "Green", "Hall", "Lewis", "Harris", "Clarke", "Patel", "Jackson", "Wood", "Turner", "Martin",
    "Cooper", "Hill", "Ward", "Morris", "Moore", "Clark", "Lee", "King", "Baker", "Harrison",
    "Morgan", "Allen", "Khan", "Ali", "Singh", "Murphy", "Kelly", "Campbell", "Stewart", "Scott",
    "Young", "Mitchell",
];
/// City and its postcode area.
const CITIES: &[(&str, &str)] = &[
    ("London", "E"),
    ("London", "SW"),
    ("London", "N"),
    ("Manchester", "M"),
    ("Birmingham", "B"),
    ("Leeds", "LS"),
    ("Glasgow", "G"),
    ("Liverpool", "L"),
    ("Bristol", "BS"),
    ("Sheffield", "S"),
    ("Edinburgh", "EH"),
    ("Cardiff", "CF"),
    ("Leicester", "LE"),
    ("Nottingham", "NG"),
    ("Newcastle upon Tyne", "NE"),
    ("Belfast", "BT"),
    ("Brighton", "BN"),
    ("Southampton", "SO"),
    ("Norwich", "NR"),
    ("York", "YO"),
    ("Oxford", "OX"),
    ("Cambridge", "CB"),
    ("Exeter", "EX"),
    ("Aberdeen", "AB"),
    ("Swansea", "SA"),
];
const DOMAINS: &[&str] = &[
    "example.com",
    "example.co.uk",
    "mail.example.org",
    "inbox.example.net",
];
const PRODUCTS: &[(&str, i64)] = &[
    ("kettle", 2499),
    ("toaster", 3499),
    ("headphones", 7999),
    ("jeans", 4500),
    ("trainers", 6500),
    ("coffee_beans", 899),
    ("phone_case", 1299),
    ("desk_lamp", 2999),
    ("winter_coat", 12000),
    ("book", 1099),
    ("gift_card", 2500),
    ("bedding_set", 5999),
];
const LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";

struct Gen {
    rng: ChaCha8Rng,
    now_secs: i64,
    avg_interactions: u32,
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

/// A bijective mix of a 64-bit number (splitmix64's finaliser): unique device ids.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `secs` since the epoch as RFC 3339 UTC.
fn rfc3339(out: &mut Vec<u8>, secs: i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
}

fn parse_now(text: &str) -> anyhow::Result<i64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .with_context(|| format!("--now {text:?} is not an RFC 3339 time"))?;
    Ok(t.unix_timestamp())
}

/// The identifiers of customer `i` that a load generator may look up.
struct Sample {
    email: String,
    phone: Option<String>,
    loyalty: Option<String>,
    device: Option<String>,
}

impl Gen {
    /// Writes customer number `i` (from 0) as one line into `out`.
    fn customer(&mut self, i: u64, out: &mut Vec<u8>) -> Sample {
        let r = &mut self.rng;
        let female = r.random_bool(0.5);
        let given = if female {
            *pick(r, GIVEN_FEMALE)
        } else {
            *pick(r, GIVEN_MALE)
        };
        let family = *pick(r, FAMILY);
        let (city, area) = *pick(r, CITIES);
        let domain = *pick(r, DOMAINS);
        let email = format!(
            "{}.{}{}@{domain}",
            given.to_ascii_lowercase(),
            family.to_ascii_lowercase(),
            i + 1
        );
        let phone = r
            .random_bool(0.5)
            .then(|| format!("+447{:09}", (i.wrapping_mul(7919) + 12_345) % 1_000_000_000));
        let loyalty = r.random_bool(0.3).then(|| format!("LC{:010}", i + 1));
        let device = r
            .random_bool(0.2)
            .then(|| format!("dev-{:016x}", mix(i ^ 0x5eed)));
        out.extend_from_slice(b"{\"identifiers\":[{\"kind\":\"EMAIL\",\"value\":\"");
        out.extend_from_slice(email.as_bytes());
        out.extend_from_slice(b"\"}");
        for (kind, v) in [
            ("PHONE", &phone),
            ("LOYALTY_CARD", &loyalty),
            ("DEVICE_ID", &device),
        ] {
            if let Some(v) = v {
                let _ = write!(out, ",{{\"kind\":\"{kind}\",\"value\":\"{v}\"}}");
            }
        }
        let _ = write!(
            out,
            ",{{\"kind\":\"EXTERNAL\",\"namespace\":\"crm\",\"value\":\"C-{:08}\"}}]",
            i + 1
        );
        // Attributes, observed some time in the last two years.
        let birth_days = r.random_range(-18_000..=9_000i64); // 1920s to 1990s
        let (by, bm, bd) = civil_from_days(birth_days);
        let gender = if r.random_bool(0.03) {
            "PREFER_NOT_TO_SAY"
        } else if female {
            "FEMALE"
        } else {
            "MALE"
        };
        let postcode = format!(
            "{area}{} {}{}{}",
            r.random_range(1..=20),
            r.random_range(1..=9),
            LETTERS[r.random_range(0..LETTERS.len())] as char,
            LETTERS[r.random_range(0..LETTERS.len())] as char
        );
        let tier = *pick(r, &["bronze", "silver", "gold", "platinum"]);
        let _ = write!(
            out,
            ",\"attributes\":{{\"given_name\":\"{given}\",\"family_name\":\"{family}\",\"birth_date\":\"{by:04}-{bm:02}-{bd:02}\",\"gender\":\"{gender}\",\"city\":\"{city}\",\"postcode\":\"{postcode}\",\"country\":\"GB\",\"language\":\"en-GB\",\"custom\":{{\"tier\":\"{tier}\",\"newsletter\":{}}}}}",
            r.random_bool(0.4)
        );
        let two_years = 730 * 86_400;
        let observed = self.now_secs - r.random_range(0..two_years);
        out.extend_from_slice(b",\"observed_at\":\"");
        rfc3339(out, observed);
        out.extend_from_slice(b"\",\"source\":\"crm_migration\"");
        // Consents: marketing by email for most, SMS for some, profiling sometimes.
        out.extend_from_slice(b",\"consents\":[");
        let marketing = if r.random_bool(0.7) {
            "GRANTED"
        } else {
            "DENIED"
        };
        let _ = write!(
            out,
            "{{\"purpose\":\"MARKETING\",\"channel\":\"EMAIL\",\"decision\":\"{marketing}\",\"source\":\"web_signup\"}}"
        );
        if r.random_bool(0.3) {
            out.extend_from_slice(b",{\"purpose\":\"MARKETING\",\"channel\":\"SMS\",\"decision\":\"GRANTED\",\"source\":\"store_form\"}");
        }
        if r.random_bool(0.2) {
            out.extend_from_slice(
                b",{\"purpose\":\"PROFILING\",\"decision\":\"DENIED\",\"source\":\"privacy_centre\"}",
            );
        }
        out.push(b']');
        if r.random_bool(0.25) {
            out.extend_from_slice(b",\"preferences\":{\"preferred_channels\":[\"EMAIL\"],\"opted_out_channels\":[\"POST\"],\"language\":\"en-GB\"}");
        }
        // Interactions.
        out.extend_from_slice(b",\"interactions\":[");
        let n = r.random_range(0..=2 * self.avg_interactions);
        for k in 0..n {
            if k > 0 {
                out.push(b',');
            }
            let at = self.now_secs - r.random_range(60..two_years);
            interaction(r, i, k, at, out);
        }
        out.extend_from_slice(b"]}\n");
        Sample {
            email,
            phone,
            loyalty,
            device,
        }
    }
}

fn interaction(r: &mut ChaCha8Rng, i: u64, k: u32, at: i64, out: &mut Vec<u8>) {
    let roll = r.random_range(0..100);
    let head = |out: &mut Vec<u8>, channel: &str, direction: &str, dept: &str, kind: &str| {
        let _ = write!(
            out,
            "{{\"channel\":\"{channel}\",\"direction\":\"{direction}\",\"department\":\"{dept}\",\"type\":\"{kind}\",\"occurred_at\":\""
        );
        rfc3339(out, at);
        out.push(b'"');
    };
    match roll {
        0..=39 => {
            let (channel, dept) = *pick(
                r,
                &[("STORE", "stores"), ("WEB", "online"), ("APP", "online")],
            );
            let (product, price) = *pick(r, PRODUCTS);
            let qty = r.random_range(1..=3i64);
            head(out, channel, "INBOUND", dept, "purchase");
            let _ = write!(
                out,
                ",\"amount\":{{\"units\":{},\"nanos\":{},\"currency\":\"GBP\"}},\"attributes\":{{\"product\":\"{product}\",\"quantity\":\"{qty}\"}}}}",
                price * qty / 100,
                (price * qty % 100) * 10_000_000
            );
        }
        40..=54 => {
            head(
                out,
                "PHONE_CALL",
                "INBOUND",
                "customer_service",
                "support_call",
            );
            let topic = *pick(r, &["delivery", "returns", "account", "billing", "product"]);
            let _ = write!(
                out,
                ",\"summary\":\"Customer called about {topic}\",\"attributes\":{{\"topic\":\"{topic}\"}}}}"
            );
        }
        55..=61 => {
            let channel = *pick(r, &["CHAT", "EMAIL", "PHONE_CALL"]);
            head(out, channel, "INBOUND", "customer_service", "complaint");
            let state = if r.random_bool(0.2) { "OPEN" } else { "CLOSED" };
            let _ = write!(
                out,
                ",\"case_id\":\"CASE-{}-{k}\",\"case_state\":\"{state}\",\"summary\":\"Complaint about a late delivery\"}}",
                i + 1
            );
        }
        62..=89 => {
            let channel = *pick(r, &["EMAIL", "SMS", "PUSH"]);
            let campaign = r.random_range(1..=48);
            head(out, channel, "OUTBOUND", "marketing", "campaign_message");
            let _ = write!(
                out,
                ",\"message_key\":\"campaign-{campaign:02}-{}\",\"purpose\":\"MARKETING\",\"attributes\":{{\"campaign\":\"c{campaign:02}\"}}}}",
                channel.to_ascii_lowercase()
            );
        }
        _ => {
            let channel = *pick(r, &["WEB", "APP"]);
            head(out, channel, "INBOUND", "billing", "bill_payment");
            let _ = write!(
                out,
                ",\"amount\":{{\"units\":{},\"currency\":\"GBP\"}}}}",
                r.random_range(20..400)
            );
        }
    }
}

fn open_out(path: &PathBuf) -> anyhow::Result<Box<dyn Write>> {
    Ok(if path.as_os_str() == "-" {
        Box::new(BufWriter::with_capacity(1 << 20, std::io::stdout().lock()))
    } else {
        Box::new(BufWriter::with_capacity(
            1 << 20,
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ))
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.sample_every == 0 {
        anyhow::bail!("--sample-every must be at least 1");
    }
    let started = Instant::now();
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(args.seed),
        now_secs: parse_now(&args.now)?,
        avg_interactions: args.interactions_per_profile,
    };
    let mut out = open_out(&args.out)?;
    let mut ids = args
        .identifiers_out
        .as_ref()
        .map(|p| {
            File::create(p)
                .map(BufWriter::new)
                .with_context(|| format!("creating {}", p.display()))
        })
        .transpose()?;
    let mut line = Vec::with_capacity(8192);
    let mut bytes = 0u64;
    for i in 0..args.profiles {
        line.clear();
        let sample = g.customer(i, &mut line);
        out.write_all(&line)?;
        bytes += line.len() as u64;
        if let Some(ids) = &mut ids {
            if i % args.sample_every == 0 {
                writeln!(ids, "EMAIL\t{}", sample.email)?;
                for (kind, v) in [
                    ("PHONE", &sample.phone),
                    ("LOYALTY_CARD", &sample.loyalty),
                    ("DEVICE_ID", &sample.device),
                ] {
                    if let Some(v) = v {
                        writeln!(ids, "{kind}\t{v}")?;
                    }
                }
            }
        }
    }
    out.flush()?;
    if let Some(ids) = &mut ids {
        ids.flush()?;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "datagen: {} profiles, {} bytes in {:.2} s ({:.0} profiles/s)",
        args.profiles,
        bytes,
        secs,
        if secs > 0.0 {
            args.profiles as f64 / secs
        } else {
            0.0
        }
    );
    Ok(())
}
