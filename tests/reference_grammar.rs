//! The image-reference grammar, proven against distribution/reference — the parser the kubelet
//! and containerd use — rather than against answers written here.
//!
//! The oracle (`tests/oracle`, built by `scripts/build-oracle.sh` from distribution's Go module)
//! judges each input with `ParseNormalizedNamed`; pinhook must accept exactly what it accepts and
//! find the same registry, repository, tag and digest. Inputs: every string literal of
//! distribution's own test files (its published test vectors), the peer cases in
//! `tests/fixtures/reference/peer_inputs.txt`, and seeded random strings built from the
//! grammar's pieces (a differential fuzz; `PINHOOK_FUZZ_SEED` and `PINHOOK_FUZZ_INPUTS` change
//! it). Where oci-spec (the peer Rust parser) also accepts, it must agree on the parts too.
//!
//! pinhook refuses three things distribution accepts, because no runtime could pull them; they
//! are recognised here from distribution's own verdict, never from pinhook's: a first component
//! distribution keeps as an empty domain (`a_b.c/app`), a host longer than 255 characters, a port
//! above 65535.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pinhook::reference::ImageRef;
use serde::Deserialize;

/// distribution's verdict on one input.
#[derive(Debug, Deserialize)]
struct Verdict {
    input: String,
    ok: bool,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    error: String,
}

fn oracle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/bin")
}

/// Asks the oracle about every input, in one process.
fn judge(inputs: &[String]) -> Vec<Verdict> {
    let bin = oracle_dir().join("reference-oracle");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/build-oracle.sh (make test does)",
        bin.display()
    );
    let mut child = Command::new(&bin)
        .arg("judge")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the reference oracle");
    let mut stdin = child.stdin.take().unwrap();
    let lines: Vec<String> = inputs
        .iter()
        .map(|s| serde_json::to_string(s).unwrap())
        .collect();
    let writer = std::thread::spawn(move || {
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    });
    let verdicts: Vec<Verdict> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
        .collect();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success(), "the oracle failed");
    assert_eq!(verdicts.len(), inputs.len(), "one verdict per input");
    verdicts
}

/// Why pinhook may refuse what distribution accepts (see the file's comment), from the verdict.
fn unpullable(v: &Verdict) -> Option<&'static str> {
    if !v.ok {
        return None;
    }
    if v.domain.is_empty() {
        return Some("empty domain");
    }
    let (host, port) = match v.domain.strip_prefix('[') {
        Some(rest) => {
            let (addr, after) = rest.split_once(']').unwrap();
            (addr.len() + 2, after.strip_prefix(':'))
        }
        None => match v.domain.split_once(':') {
            Some((h, p)) => (h.len(), Some(p)),
            None => (v.domain.len(), None),
        },
    };
    if host > 255 {
        return Some("host over 255 characters");
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Some("port above 65535");
    }
    None
}

/// Compares pinhook with every verdict; returns the disagreements, described.
fn disagreements(verdicts: &[Verdict]) -> Vec<String> {
    let mut wrong = Vec::new();
    for v in verdicts {
        let ours = ImageRef::parse_uncached(&v.input);
        match (&ours, v.ok) {
            (Ok(r), true) => {
                let mine = (
                    r.registry(),
                    r.repository(),
                    r.tag().unwrap_or(""),
                    r.digest(),
                );
                let theirs = (
                    v.domain.as_str(),
                    v.path.as_str(),
                    v.tag.as_str(),
                    (!v.digest.is_empty()).then_some(v.digest.as_str()),
                );
                if mine != theirs {
                    wrong.push(format!(
                        "{:?}: pinhook {mine:?}, distribution {theirs:?}",
                        v.input
                    ));
                }
            }
            (Err(e), true) if unpullable(v).is_none() => wrong.push(format!(
                "{:?}: pinhook refuses ({}), distribution accepts",
                v.input, e.reason
            )),
            (Ok(r), false) => wrong.push(format!(
                "{:?}: pinhook accepts as {}, distribution refuses ({})",
                v.input,
                r.normalized(),
                v.error
            )),
            _ => {}
        }
    }
    wrong
}

fn read_inputs(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn distribution_published_test_vectors_are_judged_as_distribution_judges_them() {
    let file = oracle_dir().join("distribution-vectors.jsonl");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-oracle.sh)", file.display()));
    let inputs: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        inputs.len() > 300,
        "only {} vectors extracted",
        inputs.len()
    );
    let verdicts = judge(&inputs);
    let accepted = verdicts.iter().filter(|v| v.ok).count();
    // The vectors hold both kinds in numbers: a wrong oracle or extraction shows here.
    assert!(
        accepted > 100 && verdicts.len() - accepted > 100,
        "{accepted} accepted"
    );
    let wrong = disagreements(&verdicts);
    assert!(
        wrong.is_empty(),
        "{} disagreements:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn the_peers_cases_are_judged_as_distribution_judges_them() {
    let inputs = read_inputs(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/peer_inputs.txt"),
    );
    let verdicts = judge(&inputs);
    let wrong = disagreements(&verdicts);
    assert!(
        wrong.is_empty(),
        "{} disagreements:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // The cases the issue names, explicitly.
    for (input, registry) in [
        ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000"),
        ("[::1]:5000/repo", "[::1]:5000"),
        ("Docker/docker", "Docker"),
        ("LOCALDOMAIN/debian", "LOCALDOMAIN"),
        ("Foo/bar", "Foo"),
    ] {
        assert_eq!(
            ImageRef::parse(input).unwrap().registry(),
            registry,
            "{input}"
        );
    }
    assert!(
        ImageRef::parse("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a")
            .is_err()
    );
    assert!(ImageRef::parse("").is_err());
}

/// Pieces of the grammar, valid and slightly wrong, that random inputs are assembled from.
const PIECES: &[&str] = &[
    "a",
    "b",
    "z",
    "0",
    "9",
    "ab",
    "x1",
    "Ab",
    "B",
    "LOCAL",
    "localhost",
    "docker.io",
    "index.docker.io",
    "library",
    ".",
    "..",
    "_",
    "__",
    "___",
    "-",
    "--",
    "/",
    "//",
    ":",
    "::",
    "@",
    "[",
    "]",
    "[::1]",
    "[fe80::1]",
    "[2001:db8::1]",
    ":5000",
    ":0",
    ":65536",
    ":99999",
    "example.com",
    "127.0.0.1",
    "sha256:",
    "sha512:",
    "sha256+b64:",
    "md5:",
    "0123456789abcdef",
    "0123456789ABCDEF",
    "1.0",
    "v1.2.3",
    "latest",
    "-rc",
    "_x",
    "é",
    " ",
    "\t",
    "%",
    "+",
    "=",
];

fn random_input(rng: &mut fastrand::Rng) -> String {
    let mut s = String::new();
    // Mostly plausible shapes, sometimes free-form soup.
    match rng.u8(0..4) {
        0 => {
            for _ in 0..rng.usize(1..12) {
                s.push_str(PIECES[rng.usize(..PIECES.len())]);
            }
        }
        _ => {
            if rng.bool() {
                s.push_str(
                    [
                        "registry.example",
                        "Reg.Example",
                        "localhost",
                        "[::1]",
                        "a_b.c",
                        "x",
                    ][rng.usize(..6)],
                );
                if rng.u8(0..3) == 0 {
                    s.push_str([":5000", ":0", ":70000", ":", ":x"][rng.usize(..5)]);
                }
                s.push('/');
            }
            for i in 0..rng.usize(1..4) {
                if i > 0 {
                    s.push('/');
                }
                for j in 0..rng.usize(1..4) {
                    if j > 0 && rng.u8(0..3) == 0 {
                        s.push_str([".", "_", "__", "-", "---", "..", "A"][rng.usize(..7)]);
                    }
                    s.push_str(["a", "b", "z", "0", "9", "app", "x1", "web"][rng.usize(..8)]);
                }
            }
            if rng.bool() {
                s.push(':');
                s.push_str(
                    [
                        "1.0", "v1", "_x", ".x", "-x", "Latest", "a:b", "", "1.2.3", "x",
                    ][rng.usize(..10)],
                );
            }
            if rng.u8(0..3) == 0 {
                s.push('@');
                s.push_str(
                    [
                        "sha256",
                        "sha256",
                        "sha512",
                        "sha384",
                        "SHA256",
                        "sha256+b64",
                        "md5",
                        "",
                    ][rng.usize(..8)],
                );
                s.push(':');
                let n = [64, 64, 128, 96, 32, 63, 65, 0][rng.usize(..8)];
                let hex = if rng.u8(0..5) == 0 {
                    "ABCDEF0123"
                } else {
                    "abcdef0123"
                };
                s.extend((0..n).map(|i| hex.as_bytes()[i % 10] as char));
            }
        }
    }
    s
}

#[test]
fn random_references_are_judged_as_distribution_judges_them_and_as_oci_spec_where_both_accept() {
    let seed = std::env::var("PINHOOK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let count = std::env::var("PINHOOK_FUZZ_INPUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000_usize);
    let mut rng = fastrand::Rng::with_seed(seed);
    let inputs: Vec<String> = (0..count).map(|_| random_input(&mut rng)).collect();
    let verdicts = judge(&inputs);
    let accepted = verdicts.iter().filter(|v| v.ok).count();
    // The generator must reach both sides of the grammar, or the comparison proves little.
    assert!(
        accepted > count / 10 && accepted < count * 9 / 10,
        "{accepted} of {count} accepted"
    );
    let wrong = disagreements(&verdicts);
    assert!(
        wrong.is_empty(),
        "seed {seed}: {} disagreements, e.g.:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(20)].join("\n")
    );

    // oci-spec, where it accepts too: the same parts, except where oci-spec reads an uppercase
    // first component as part of a Docker Hub repository (distribution reads it as the host).
    let mut compared = 0;
    let mut differ = Vec::new();
    for v in verdicts.iter().filter(|v| v.ok) {
        let (Ok(ours), Ok(theirs)) = (
            ImageRef::parse_uncached(&v.input),
            oci_client::Reference::try_from(v.input.as_str()),
        ) else {
            continue;
        };
        compared += 1;
        let mine = (
            ours.registry(),
            ours.repository(),
            ours.effective_tag(),
            ours.digest(),
        );
        let peer = (
            theirs.registry(),
            theirs.repository(),
            theirs.tag(),
            theirs.digest(),
        );
        let uppercase_host = ours.registry().bytes().any(|b| b.is_ascii_uppercase());
        if mine != peer && !uppercase_host {
            differ.push(format!(
                "{:?}: pinhook {mine:?}, oci-spec {peer:?}",
                v.input
            ));
        }
    }
    assert!(
        compared > count / 20,
        "only {compared} compared with oci-spec"
    );
    assert!(
        differ.is_empty(),
        "{} differences with oci-spec, e.g.:\n{}",
        differ.len(),
        differ[..differ.len().min(20)].join("\n")
    );
}
