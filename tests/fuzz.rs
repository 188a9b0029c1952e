//! Property-based fuzzing of every input reslim reads from a user (issue 13): `train`
//! flags, sweep and spirals specs, and the NPY files of `train --init-npy`.
//!
//! The properties, for every generated input:
//! - the process exits normally (no signal: no segfault, no abort);
//! - stderr shows no panic (`panicked`, `RUST_BACKTRACE`, arithmetic `overflow`);
//! - a non-zero exit prints a line starting `error:`;
//! - that error names a field or a file: a quoted name (`'M'`, `` `widht` ``), a flag
//!   (`--steps`), or the path of the file it is about.
//!
//! Exit 0 is allowed: many generated inputs are valid. The generators start from tiny
//! valid inputs (dimensions <= 4, steps <= 3, two-point grids) and mutate them with
//! hostile values (0, negatives, 2^31, 2^32, 2^62, 2^63 - 1, u64::MAX, 1e15, NaN, inf,
//! empty or non-numeric strings, wrong TOML types, dropped and unknown keys, mangled NPY
//! headers), so every case is either refused at once or does a few milliseconds of work.
//! Each subprocess gets a wall-clock limit (`CASE_TIMEOUT`; a timeout is a failure),
//! `RESLIM_MEMORY_LIMIT` = 2 GB, 2 rayon threads, an 8 GiB address-space limit (so a
//! huge allocation fails instead of swapping the machine) and no core dumps.
//!
//! Generation is deterministic (ChaCha with a fixed seed per family) so CI reproduces.
//! Case counts are sized for about a minute and a half on 2 cores; `RESLIM_FUZZ_SCALE`
//! (a float, default 1) multiplies them for a longer local run. Each family prints
//! `fuzz <family>: N cases, P panics, S signals, T timeouts, E bad errors` and one
//! reproducer per distinct failure.
//!
//! The in-process families call `reslim::io::read_npy`, `SweepSpec::check` and
//! `ExperimentSpec::check` directly under `catch_unwind`, thousands of cases each.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use toml::{Table, Value};

/// Wall-clock limit of one subprocess.
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The harness: deterministic generation, subprocesses, the properties, the tally.

fn scale() -> f64 {
    std::env::var("RESLIM_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0)
}

fn cases(base: usize) -> usize {
    ((base as f64 * scale()).round() as usize).max(1)
}

/// A runner whose RNG is ChaCha seeded from the family's name: the same cases every run.
fn runner(family: &str) -> TestRunner {
    let mut seed = [0u8; 32];
    for (i, b) in format!("reslim-fuzz-13-{family}").bytes().enumerate() {
        seed[i % 32] ^= b.wrapping_mul(31).wrapping_add(i as u8);
    }
    TestRunner::new_with_rng(
        Config {
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    )
}

/// `n` values of `s`, drawn in order (no shrinking: a failing case is printed whole).
fn draw<S: Strategy>(family: &str, s: S, n: usize) -> Vec<S::Value> {
    let mut r = runner(family);
    (0..n)
        .map(|_| s.new_tree(&mut r).expect("strategy draws").current())
        .collect()
}

/// A fresh directory of one case under the system temp dir, removed on drop.
struct CaseDir(PathBuf);

impl CaseDir {
    fn new(family: &str, i: usize) -> Self {
        let d =
            std::env::temp_dir().join(format!("reslim-fuzz-{}-{family}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        CaseDir(d)
    }
}

impl Drop for CaseDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Outcome {
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    stderr: String,
}

/// Runs the binary in `dir` with `args`, killing it after `CASE_TIMEOUT`.
fn run_cli(dir: &Path, args: &[OsString]) -> Outcome {
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
    let err_path = dir.join("stderr.txt");
    let err_file = std::fs::File::create(&err_path).expect("stderr file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reslim"));
    cmd.args(args)
        .current_dir(dir)
        .env("RESLIM_MEMORY_LIMIT", "2000000000")
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file);
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit).
    unsafe {
        cmd.pre_exec(|| {
            let as_limit = libc::rlimit {
                rlim_cur: 8 << 30,
                rlim_max: 8 << 30,
            };
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_AS, &as_limit);
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("the binary starts");
    let t0 = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if t0.elapsed() > CASE_TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(3));
    };
    let mut stderr = String::new();
    if let Ok(mut f) = std::fs::File::open(&err_path) {
        let mut b = Vec::new();
        let _ = f.read_to_end(&mut b);
        stderr = String::from_utf8_lossy(&b).into_owned();
    }
    Outcome {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stderr,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Panic,
    Signal,
    Timeout,
    NoErrorLine,
    UnnamedError,
    /// In-process: an accepted input that breaks an invariant (e.g. an NPY shape that
    /// does not match its data).
    Accepted,
}

/// Whether an error message names a field or a file.
fn names_field_or_file(msg: &str, files: &[&str]) -> bool {
    // A quoted name: 'M', 'grid.L', '--L <L>', `widht`.
    let quoted = |q: char| {
        let mut parts = msg.split(q);
        parts.next();
        // After the first quote, every other segment is inside quotes.
        parts.step_by(2).any(|s| {
            let s = s.trim_start_matches("--");
            s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && s.len() < 80
                && !s.contains('\n')
        })
    };
    let flag = msg.match_indices("--").any(|(i, _)| {
        msg[i + 2..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
    });
    quoted('\'')
        || quoted('`')
        || flag
        || files.iter().any(|f| !f.is_empty() && msg.contains(f))
        || [".npy", ".toml", ".csv", ".json"]
            .iter()
            .any(|e| msg.contains(e))
}

/// The properties of one subprocess outcome; `Err` holds the kind and a short reason.
fn judge(o: &Outcome, files: &[&str]) -> Result<(), (Kind, String)> {
    let first_line = |pat: &str| {
        o.stderr
            .lines()
            .find(|l| l.contains(pat))
            .unwrap_or("")
            .chars()
            .take(300)
            .collect::<String>()
    };
    if o.timed_out {
        return Err((Kind::Timeout, format!("killed after {CASE_TIMEOUT:?}")));
    }
    if let Some(s) = o.signal {
        let why = first_line("memory allocation");
        return Err((Kind::Signal, format!("signal {s} {why}")));
    }
    for pat in [
        "panicked",
        "RUST_BACKTRACE",
        "attempt to add with overflow",
        "attempt to multiply with overflow",
        "attempt to subtract with overflow",
        "capacity overflow",
    ] {
        if o.stderr.contains(pat) {
            return Err((Kind::Panic, first_line("panicked")));
        }
    }
    if o.code == Some(0) {
        return Ok(());
    }
    let Some(i) = o
        .stderr
        .find("error:")
        .filter(|&i| i == 0 || o.stderr.as_bytes()[i - 1] == b'\n')
    else {
        return Err((
            Kind::NoErrorLine,
            format!(
                "exit {:?} without an 'error:' line: {}",
                o.code,
                o.stderr.chars().take(300).collect::<String>()
            ),
        ));
    };
    let msg = &o.stderr[i..];
    if !names_field_or_file(msg, files) {
        return Err((
            Kind::UnnamedError,
            msg.lines().next().unwrap_or("").chars().take(300).collect(),
        ));
    }
    Ok(())
}

/// Counts per kind, and one reproducer per distinct failure class.
#[derive(Default)]
struct Tally {
    cases: usize,
    counts: BTreeMap<Kind, usize>,
    /// class -> (count, first reproducer)
    classes: BTreeMap<(Kind, String), (usize, String)>,
}

/// A failure's class: its kind and its message with numbers and paths blurred.
fn class_of(why: &str) -> String {
    let mut s = String::new();
    let mut last_digit = false;
    for c in why.chars() {
        if c.is_ascii_digit() {
            if !last_digit {
                s.push('#');
            }
            last_digit = true;
        } else {
            s.push(c);
            last_digit = false;
        }
    }
    // Paths differ per case.
    let s = s
        .split_whitespace()
        .map(|w| {
            if w.contains("reslim-fuzz-") {
                "<path>"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    s.chars().take(160).collect()
}

impl Tally {
    fn record(&mut self, res: Result<(), (Kind, String)>, repro: impl FnOnce() -> String) {
        self.cases += 1;
        if let Err((kind, why)) = res {
            *self.counts.entry(kind).or_default() += 1;
            let e = self
                .classes
                .entry((kind, class_of(&why)))
                .or_insert_with(|| (0, format!("{why}\n    reproducer: {}", repro())));
            e.0 += 1;
        }
    }
    fn count(&self, k: Kind) -> usize {
        self.counts.get(&k).copied().unwrap_or(0)
    }
    fn failures(&self) -> usize {
        self.counts.values().sum()
    }
    /// Prints the summary line and the classes; panics (fails the test) on any failure.
    fn finish(self, family: &str, t0: Instant) {
        let mut line = format!(
            "fuzz {family}: {} cases, {} panics, {} signals, {} timeouts, {} errors without \
             'error:', {} errors naming no field or file",
            self.cases,
            self.count(Kind::Panic),
            self.count(Kind::Signal),
            self.count(Kind::Timeout),
            self.count(Kind::NoErrorLine),
            self.count(Kind::UnnamedError),
        );
        if self.count(Kind::Accepted) > 0 {
            let _ = write!(line, ", {} bad inputs accepted", self.count(Kind::Accepted));
        }
        let _ = write!(line, " ({:.1} s)", t0.elapsed().as_secs_f64());
        let mut detail = String::new();
        for ((kind, _), (n, repro)) in &self.classes {
            let _ = writeln!(detail, "  [{kind:?} x{n}] {repro}");
        }
        eprintln!("{line}");
        if !detail.is_empty() {
            eprintln!("{detail}");
        }
        assert!(self.failures() == 0, "{line}\n{detail}");
    }
}

/// Shell-quotes a command line for a reproducer.
fn shell(args: &[OsString]) -> String {
    let mut s = String::from("reslim");
    for a in args {
        let a = a.to_string_lossy();
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=+:,".contains(c))
        {
            let _ = write!(s, " {a}");
        } else {
            let _ = write!(s, " '{}'", a.replace('\'', "'\\''"));
        }
    }
    s
}

// ---------------------------------------------------------------------------------------
// Hostile values.

const HUGE: [i64; 7] = [
    1 << 31,
    1 << 32,
    1 << 40,
    1 << 61,
    1 << 62,
    i64::MAX,
    i64::MIN,
];

/// A command-line integer: mostly small valid values, else 0, negatives, huge values
/// (past i64 and u64 too), floats, words and the empty string.
fn int_arg() -> BoxedStrategy<String> {
    prop_oneof![
        8 => (1i64..=4).prop_map(|v| v.to_string()),
        1 => Just("0".to_string()),
        1 => prop::sample::select(vec!["-1", "-4", "-9223372036854775808"]).prop_map(String::from),
        3 => prop::sample::select(HUGE.to_vec()).prop_map(|v| v.to_string()),
        1 => prop::sample::select(vec![
            "18446744073709551615", "18446744073709551616", "1e15", "1.5", "0x10", "NaN",
            "abc", "", " 3", "3 ", "+2", "٣",
        ]).prop_map(String::from),
    ]
    .boxed()
}

/// A command-line float.
fn float_arg() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(vec!["0.1", "0.5", "1", "2"]).prop_map(String::from),
        3 => prop::sample::select(vec![
            "0", "-0", "-1", "NaN", "nan", "inf", "-inf", "infinity", "1e308", "1e309",
            "4.9e-324", "1e15", "-1e15", "abc", "", "1,5",
        ]).prop_map(String::from),
    ]
    .boxed()
}

fn word_arg(valid: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(valid.to_vec()).prop_map(String::from),
        1 => prop::sample::select(vec!["", "x", "TANH", "--", "-1", "f16", "é", "a b"])
            .prop_map(String::from),
    ]
    .boxed()
}

/// A TOML integer field's value: small valid, zero, negative, huge, or the wrong type.
fn toml_int() -> BoxedStrategy<Value> {
    prop_oneof![
        8 => (1i64..=4).prop_map(Value::Integer),
        1 => Just(Value::Integer(0)),
        1 => Just(Value::Integer(-1)),
        3 => prop::sample::select(HUGE.to_vec()).prop_map(Value::Integer),
        1 => prop::sample::select(vec![1e15, 0.5, 1.8446744073709552e19, f64::NAN, f64::INFINITY])
            .prop_map(Value::Float),
        1 => prop::sample::select(vec![
            Value::String("3".into()),
            Value::Boolean(true),
            Value::Array(vec![]),
            Value::Table(Table::new()),
        ]),
    ]
    .boxed()
}

fn toml_float() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => prop::sample::select(vec![0.05, 0.5, 1.0, 2.0]).prop_map(Value::Float),
        3 => prop::sample::select(vec![
            0.0, -0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e308, 5e-324, 1e15,
        ]).prop_map(Value::Float),
        1 => prop::sample::select(vec![
            Value::Integer(2),
            Value::Integer(i64::MAX),
            Value::String("1.0".into()),
            Value::Boolean(false),
        ]),
    ]
    .boxed()
}

fn toml_word(valid: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop_oneof![
        6 => prop::sample::select(valid.to_vec()).prop_map(|s| Value::String(s.into())),
        1 => prop::sample::select(vec![
            Value::String("".into()),
            Value::String("nope".into()),
            Value::Integer(1),
            Value::Array(vec![Value::String("tanh".into())]),
        ]),
    ]
    .boxed()
}

fn toml_int_list() -> BoxedStrategy<Value> {
    prop::collection::vec(toml_int(), 0..4)
        .prop_map(Value::Array)
        .boxed()
}

/// A grid axis: a list, or `{ logspace = [lo, hi, count] }` with bad bounds, bad or
/// huge counts and odd numbers of entries.
fn toml_axis() -> BoxedStrategy<Value> {
    let bound = prop_oneof![
        4 => prop::sample::select(vec![1.0, 2.0, 3.0, 4.0]).prop_map(Value::Float),
        2 => prop::sample::select(vec![
            0.0, 0.5, -1.0, 64.0, 1e6, 1e19, 1e300, f64::INFINITY, f64::NAN,
        ]).prop_map(Value::Float),
        1 => prop::sample::select(vec![1i64, 4, 1 << 40]).prop_map(Value::Integer),
    ];
    let count = prop_oneof![
        4 => (1i64..=3).prop_map(Value::Integer),
        2 => prop::sample::select(vec![0i64, -1, 1 << 31, 1 << 40, 1 << 62, i64::MAX])
            .prop_map(Value::Integer),
        1 => Just(Value::Float(2.5)),
    ];
    prop_oneof![
        3 => toml_int_list(),
        3 => (bound.clone(), bound.clone(), count.clone()).prop_map(|(a, b, c)| {
            let mut t = Table::new();
            t.insert("logspace".into(), Value::Array(vec![a, b, c]));
            Value::Table(t)
        }),
        1 => prop::collection::vec(bound, 0..5).prop_map(|v| {
            let mut t = Table::new();
            t.insert("logspace".into(), Value::Array(v));
            Value::Table(t)
        }),
        1 => Just(Value::String("1..4".into())),
    ]
    .boxed()
}

/// One sample list of `data.x` / `data.y`: one vector, several, ragged, non-finite.
fn toml_samples() -> BoxedStrategy<Value> {
    let num = prop_oneof![
        6 => (-2i32..=2).prop_map(|v| Value::Float(v as f64 * 0.5)),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, 1e308]).prop_map(Value::Float),
        1 => Just(Value::Integer(1)),
        1 => Just(Value::String("1".into())),
    ];
    let row = prop::collection::vec(num, 0..4).prop_map(Value::Array);
    prop_oneof![
        1 => row.clone(),
        2 => prop::collection::vec(row, 0..5).prop_map(Value::Array),
        1 => Just(Value::String("x".into())),
    ]
    .boxed()
}

/// Any table-ish value: wrong section types and unknown keys.
fn toml_junk() -> BoxedStrategy<Value> {
    prop::sample::select(vec![
        Value::Integer(1),
        Value::String("junk".into()),
        Value::Array(vec![Value::Integer(1)]),
        Value::Table(Table::new()),
        Value::Table({
            let mut t = Table::new();
            t.insert("unknown".into(), Value::Integer(1));
            t
        }),
    ])
    .boxed()
}

// ---------------------------------------------------------------------------------------
// Structural mutations of a TOML document.

#[derive(Debug, Clone)]
enum Mutation {
    Set(&'static str, Value),
    Remove(&'static str),
}

/// A mutation of the document's text after serialization.
#[derive(Debug, Clone)]
enum TextMutation {
    None,
    /// Cut the text at this fraction of its length.
    Truncate(f64),
    Append(&'static str),
}

fn text_mutation() -> BoxedStrategy<TextMutation> {
    prop_oneof![
        20 => Just(TextMutation::None),
        1 => (0.0f64..1.0).prop_map(TextMutation::Truncate),
        1 => prop::sample::select(vec![
            "\n[[grid]]\n", "\nname = \"again\"\n", "\x00", "\n= 3\n", "\n[data\n", "\u{feff}",
            "\nsteps = 1\n",
        ]).prop_map(TextMutation::Append),
    ]
    .boxed()
}

fn apply(doc: &mut Table, m: &Mutation) {
    let (path, value) = match m {
        Mutation::Set(p, v) => (*p, Some(v.clone())),
        Mutation::Remove(p) => (*p, None),
    };
    let keys: Vec<&str> = path.split('/').collect();
    let mut t = doc;
    for k in &keys[..keys.len() - 1] {
        let entry = t
            .entry(k.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            if value.is_none() {
                return;
            }
            *entry = Value::Table(Table::new());
        }
        t = entry.as_table_mut().expect("a table");
    }
    let last = keys[keys.len() - 1].to_string();
    match value {
        Some(v) => {
            t.insert(last, v);
        }
        None => {
            t.remove(&last);
        }
    }
}

fn render(doc: &Table, tm: &TextMutation) -> String {
    let mut s = toml::to_string(doc).unwrap_or_else(|e| format!("# unserializable: {e}\n"));
    match tm {
        TextMutation::None => {}
        TextMutation::Truncate(f) => {
            let mut cut = (s.len() as f64 * f) as usize;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        TextMutation::Append(a) => s.push_str(a),
    }
    s
}

fn parse(s: &str) -> Table {
    toml::from_str(s).expect("the base spec parses")
}

// ---------------------------------------------------------------------------------------
// Sweep specs.

const SWEEP_BASE: &str = r#"
name = "fz"
preset = "chizat-julia"
activation = "tanh"
steps = 3
lr = 0.5
reps = 1
seed = 1
read_steps = [1, 2]
couplings = ["coupled", "uncoupled"]

[data]
din = 2
dout = 2
N = 3
seed = 1

[grid]
L = [1, 2]
M = [2, 3]
D = [2, 3]

[reference]
kind = "largest"

[report]
step = 2
bootstrap = 5
"#;

fn sweep_mutation() -> BoxedStrategy<Mutation> {
    const PRESETS: &[&str] = &["chizat-julia", "chizat-python", "lazy", "standard"];
    const ACTS: &[&str] = &["tanh", "relu", "gelu", "softplus", "linear"];
    let remove = prop::sample::select(vec![
        "name",
        "preset",
        "activation",
        "steps",
        "lr",
        "reps",
        "seed",
        "read_steps",
        "couplings",
        "data",
        "data/din",
        "data/dout",
        "data/N",
        "data/seed",
        "grid",
        "grid/L",
        "grid/M",
        "grid/D",
        "reference",
        "reference/kind",
        "report",
        "report/step",
        "report/bootstrap",
        "dtype",
    ])
    .prop_map(Mutation::Remove);
    let reference = prop_oneof![
        prop::sample::select(vec!["largest", "shape", "limit", "nope"]).prop_map(|k| {
            let mut t = Table::new();
            t.insert("kind".into(), Value::String(k.into()));
            Value::Table(t)
        }),
        (toml_int(), toml_int(), toml_int()).prop_map(|(l, m, d)| {
            let mut t = Table::new();
            t.insert("kind".into(), Value::String("shape".into()));
            t.insert("L".into(), l);
            t.insert("M".into(), m);
            t.insert("D".into(), d);
            Value::Table(t)
        }),
        (
            toml_float(),
            toml_float(),
            prop_oneof![
                3 => (1i64..=8).prop_map(Value::Integer),
                1 => toml_int(),
            ]
        )
            .prop_map(|(r, a, n)| {
                let mut t = Table::new();
                t.insert("kind".into(), Value::String("limit".into()));
                t.insert("rtol".into(), r);
                t.insert("atol".into(), a);
                t.insert("num_s".into(), n);
                Value::Table(t)
            }),
        toml_junk(),
    ];
    let couplings = prop_oneof![
        Just(Value::Array(vec![])),
        Just(Value::Array(vec![Value::String("coupled".into()); 2])),
        Just(Value::Array(vec![Value::String("uncoupled".into())])),
        Just(Value::Array(vec![Value::String("both".into())])),
        Just(Value::String("coupled".into())),
    ];
    prop_oneof![
        3 => remove,
        2 => toml_word(PRESETS).prop_map(|v| Mutation::Set("preset", v)),
        2 => toml_word(ACTS).prop_map(|v| Mutation::Set("activation", v)),
        3 => toml_int().prop_map(|v| Mutation::Set("steps", v)),
        2 => toml_float().prop_map(|v| Mutation::Set("lr", v)),
        2 => toml_int().prop_map(|v| Mutation::Set("reps", v)),
        1 => toml_int().prop_map(|v| Mutation::Set("seed", v)),
        3 => toml_int_list().prop_map(|v| Mutation::Set("read_steps", v)),
        2 => couplings.prop_map(|v| Mutation::Set("couplings", v)),
        2 => toml_int().prop_map(|v| Mutation::Set("data/din", v)),
        2 => toml_int().prop_map(|v| Mutation::Set("data/dout", v)),
        2 => toml_int().prop_map(|v| Mutation::Set("data/N", v)),
        3 => toml_samples().prop_map(|v| Mutation::Set("data/x", v)),
        3 => toml_samples().prop_map(|v| Mutation::Set("data/y", v)),
        3 => toml_axis().prop_map(|v| Mutation::Set("grid/L", v)),
        3 => toml_axis().prop_map(|v| Mutation::Set("grid/M", v)),
        3 => toml_axis().prop_map(|v| Mutation::Set("grid/D", v)),
        4 => reference.prop_map(|v| Mutation::Set("reference", v)),
        2 => toml_int().prop_map(|v| Mutation::Set("report/step", v)),
        2 => toml_int().prop_map(|v| Mutation::Set("report/p_step", v)),
        1 => toml_int_list().prop_map(|v| Mutation::Set("report/slice_m", v)),
        1 => toml_int_list().prop_map(|v| Mutation::Set("report/slice_d", v)),
        1 => toml_float().prop_map(|v| Mutation::Set("report/p_max", v)),
        2 => toml_int().prop_map(|v| Mutation::Set("report/bootstrap", v)),
        2 => toml_word(&["f64", "f32"]).prop_map(|v| Mutation::Set("dtype", v)),
        1 => toml_float().prop_map(|v| Mutation::Set("param/alpha", v)),
        1 => toml_junk().prop_map(|v| Mutation::Set("param/U", v)),
        1 => toml_junk().prop_map(|v| Mutation::Set("unknown_key", v)),
        1 => toml_junk().prop_map(|v| Mutation::Set("grid/X", v)),
        1 => toml_junk().prop_map(|v| Mutation::Set("report/extra", v)),
        1 => toml_junk().prop_map(|v| Mutation::Set("data", v)),
        1 => toml_junk().prop_map(|v| Mutation::Set("grid", v)),
    ]
    .boxed()
}

fn sweep_text() -> BoxedStrategy<String> {
    (
        prop::collection::vec(sweep_mutation(), 0..4),
        text_mutation(),
    )
        .prop_map(|(ms, tm)| {
            let mut doc = parse(SWEEP_BASE);
            for m in &ms {
                apply(&mut doc, m);
            }
            render(&doc, &tm)
        })
        .boxed()
}

#[derive(Debug, Clone)]
struct SweepCase {
    spec: String,
    jobs: Option<String>,
    plan: bool,
    report_only: bool,
    max_tasks: Option<String>,
}

fn sweep_case() -> BoxedStrategy<SweepCase> {
    let jobs = prop_oneof![
        6 => Just(None),
        2 => prop::sample::select(vec!["1", "2"]).prop_map(|s| Some(s.to_string())),
        1 => prop::sample::select(vec!["0", "100000", "9223372036854775807", "-1", "x"])
            .prop_map(|s| Some(s.to_string())),
    ];
    let max_tasks = prop_oneof![
        8 => Just(None),
        1 => prop::sample::select(vec!["0", "1", "18446744073709551615"])
            .prop_map(|s| Some(s.to_string())),
    ];
    (
        sweep_text(),
        jobs,
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
        max_tasks,
    )
        .prop_map(|(spec, jobs, plan, report_only, max_tasks)| SweepCase {
            spec,
            jobs,
            plan,
            report_only,
            max_tasks,
        })
        .boxed()
}

#[test]
fn fuzz_sweep_cli() {
    let t0 = Instant::now();
    let mut tally = Tally::default();
    for (i, c) in draw("sweep", sweep_case(), cases(400))
        .into_iter()
        .enumerate()
    {
        let dir = CaseDir::new("sweep", i);
        let spec = dir.0.join("spec.toml");
        std::fs::write(&spec, &c.spec).unwrap();
        let mut args: Vec<OsString> = vec!["sweep".into(), "spec.toml".into(), "--out".into()];
        args.push("out".into());
        if let Some(j) = &c.jobs {
            args.extend(["--jobs".into(), j.into()]);
        }
        if c.plan {
            args.push("--plan".into());
        }
        if c.report_only {
            args.push("--report-only".into());
        }
        if let Some(m) = &c.max_tasks {
            args.extend(["--max-tasks".into(), m.into()]);
        }
        let o = run_cli(&dir.0, &args);
        let files = [spec.to_str().unwrap(), "spec.toml", "out"];
        tally.record(judge(&o, &files), || {
            format!("{}  with spec.toml =\n{}", shell(&args), indent(&c.spec))
        });
    }
    tally.finish("sweep", t0);
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------
// Spirals specs.

const SPIRALS_BASE: &str = r#"
name = "fz"
seed = 1
seeds = 1
n_train = [4, 6]
n_test = 10

[data]
source = "spirals"
turns = 2.0
noise = 0.5
lift = 0.5

[model]
L = 2
M = 4
M0 = 4
alpha = 1.0
beta = { c = 0.25, n = 0.5 }
activation = "tanh"
init = "symmetric"

[train]
lr = 5.0
max_steps = 3
target_loss = 5e-3
backoff = 0.7
backoff_rise = 0.5
growth = 1.0

[measure]
checkpoints = 2
gram = true
gram_max_n = 100
delta = 0.05
"#;

/// Contents of a CSV data file: valid, ragged, non-numeric, bad labels, empty.
fn csv_text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => Just("0.1,0.2,1\n-0.3,0.4,-1\n0.5,-0.6,1\n0.7,0.8,-1\n0.9,-1.0,1\n-0.2,0.1,-1\n0.3,0.3,1\n-0.4,-0.4,-1\n".to_string()),
        1 => Just(String::new()),
        1 => Just("x1,x2,label\n0.1,0.2,1\n0.3,0.4,-1\n0.5,0.6,1\n".to_string()),
        1 => Just("0.1,0.2,1\n0.3,-1\n0.5,0.6,1,7\n".to_string()),
        1 => Just("0.1,nan,1\n0.3,inf,-1\n0.5,0.6,1\n".to_string()),
        1 => Just("0.1,0.2,3\n0.3,0.4,0\n0.5,0.6,1\n".to_string()),
        1 => Just("1\n-1\n1\n-1\n".to_string()),
        1 => Just("\u{0}\u{ff}garbage".to_string()),
    ]
    .boxed()
}

fn spirals_mutation() -> BoxedStrategy<Mutation> {
    const ACTS: &[&str] = &["tanh", "relu", "gelu", "softplus", "linear"];
    let remove = prop::sample::select(vec![
        "name",
        "seed",
        "n_test",
        "data",
        "data/source",
        "data/turns",
        "data/noise",
        "data/lift",
        "model/alpha",
        "model/beta",
        "model/activation",
        "model/init",
        "train",
        "train/lr",
        "train/max_steps",
        "train/target_loss",
        "train/backoff",
        "train/backoff_rise",
        "train/growth",
        "measure",
        "measure/checkpoints",
        "measure/gram",
        "measure/gram_max_n",
        "measure/delta",
    ])
    .prop_map(Mutation::Remove);
    let n_train = prop_oneof![
        3 => prop::collection::vec(
            prop_oneof![4 => (2i64..=8).prop_map(Value::Integer), 1 => toml_int()],
            0..4,
        ).prop_map(Value::Array),
        1 => Just(Value::Array(vec![Value::Integer(4), Value::Integer(4)])),
        1 => toml_int(),
    ];
    let scale = prop_oneof![
        (toml_float(), toml_float()).prop_map(|(c, n)| {
            let mut t = Table::new();
            t.insert("c".into(), c);
            t.insert("n".into(), n);
            Value::Table(t)
        }),
        toml_junk(),
    ];
    let max_steps = prop_oneof![
        2 => toml_int(),
        2 => (
            prop_oneof![2 => Just(Value::Float(1.0)), 1 => toml_float()],
            prop_oneof![2 => Just(Value::Float(0.25)), 1 => toml_float()],
        ).prop_map(|(c, n)| {
            let mut t = Table::new();
            t.insert("c".into(), c);
            t.insert("n".into(), n);
            Value::Table(t)
        }),
    ];
    let path = prop_oneof![
        Just(Value::String("train.csv".into())),
        Just(Value::String("test.csv".into())),
        Just(Value::String("missing.csv".into())),
        Just(Value::String(".".into())),
        Just(Value::String("".into())),
        Just(Value::Integer(3)),
    ];
    prop_oneof![
        3 => remove,
        1 => toml_int().prop_map(|v| Mutation::Set("seed", v)),
        3 => toml_int().prop_map(|v| Mutation::Set("seeds", v)),
        3 => n_train.prop_map(|v| Mutation::Set("n_train", v)),
        3 => toml_int().prop_map(|v| Mutation::Set("n_test", v)),
        3 => toml_word(&["spirals", "csv"]).prop_map(|v| Mutation::Set("data/source", v)),
        1 => toml_float().prop_map(|v| Mutation::Set("data/turns", v)),
        1 => toml_float().prop_map(|v| Mutation::Set("data/noise", v)),
        1 => toml_float().prop_map(|v| Mutation::Set("data/lift", v)),
        2 => path.clone().prop_map(|v| Mutation::Set("data/train", v)),
        2 => path.prop_map(|v| Mutation::Set("data/test", v)),
        1 => prop::sample::select(vec![Value::Boolean(true), Value::Boolean(false), Value::Integer(1)])
            .prop_map(|v| Mutation::Set("data/normalize", v)),
        3 => toml_int().prop_map(|v| Mutation::Set("model/L", v)),
        3 => toml_int().prop_map(|v| Mutation::Set("model/M", v)),
        3 => toml_int().prop_map(|v| Mutation::Set("model/M0", v)),
        1 => toml_float().prop_map(|v| Mutation::Set("model/alpha", v)),
        2 => scale.prop_map(|v| Mutation::Set("model/beta", v)),
        1 => toml_word(ACTS).prop_map(|v| Mutation::Set("model/activation", v)),
        1 => toml_word(&["symmetric", "iid"]).prop_map(|v| Mutation::Set("model/init", v)),
        1 => toml_float().prop_map(|v| Mutation::Set("train/lr", v)),
        3 => max_steps.prop_map(|v| Mutation::Set("train/max_steps", v)),
        1 => toml_float().prop_map(|v| Mutation::Set("train/target_loss", v)),
        1 => toml_float().prop_map(|v| Mutation::Set("train/backoff", v)),
        1 => toml_float().prop_map(|v| Mutation::Set("train/backoff_rise", v)),
        1 => toml_float().prop_map(|v| Mutation::Set("train/growth", v)),
        2 => toml_int().prop_map(|v| Mutation::Set("measure/checkpoints", v)),
        1 => prop::sample::select(vec![Value::Boolean(true), Value::Boolean(false), Value::String("yes".into())])
            .prop_map(|v| Mutation::Set("measure/gram", v)),
        1 => toml_int().prop_map(|v| Mutation::Set("measure/gram_max_n", v)),
        2 => toml_float().prop_map(|v| Mutation::Set("measure/delta", v)),
        1 => toml_junk().prop_map(|v| Mutation::Set("unknown_key", v)),
        1 => toml_junk().prop_map(|v| Mutation::Set("model/extra", v)),
        1 => toml_junk().prop_map(|v| Mutation::Set("model", v)),
        1 => toml_junk().prop_map(|v| Mutation::Set("measure", v)),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
struct SpiralsCase {
    spec: String,
    train_csv: Option<String>,
    test_csv: Option<String>,
}

fn spirals_case() -> BoxedStrategy<SpiralsCase> {
    (
        prop::collection::vec(spirals_mutation(), 0..4),
        text_mutation(),
        prop::option::weighted(0.8, csv_text()),
        prop::option::weighted(0.8, csv_text()),
    )
        .prop_map(|(ms, tm, train_csv, test_csv)| {
            let mut doc = parse(SPIRALS_BASE);
            for m in &ms {
                apply(&mut doc, m);
            }
            SpiralsCase {
                spec: render(&doc, &tm),
                train_csv,
                test_csv,
            }
        })
        .boxed()
}

fn write_spirals_case(dir: &Path, c: &SpiralsCase) -> PathBuf {
    let spec = dir.join("spec.toml");
    std::fs::write(&spec, &c.spec).unwrap();
    if let Some(t) = &c.train_csv {
        std::fs::write(dir.join("train.csv"), t).unwrap();
    }
    if let Some(t) = &c.test_csv {
        std::fs::write(dir.join("test.csv"), t).unwrap();
    }
    spec
}

#[test]
fn fuzz_spirals_cli() {
    let t0 = Instant::now();
    let mut tally = Tally::default();
    for (i, c) in draw("spirals", spirals_case(), cases(400))
        .into_iter()
        .enumerate()
    {
        let dir = CaseDir::new("spirals", i);
        let spec = write_spirals_case(&dir.0, &c);
        let args: Vec<OsString> = vec![
            "spirals".into(),
            "spec.toml".into(),
            "--out".into(),
            "out".into(),
        ];
        let o = run_cli(&dir.0, &args);
        let files = [
            spec.to_str().unwrap(),
            "spec.toml",
            "train.csv",
            "test.csv",
            "missing.csv",
            "out",
        ];
        tally.record(judge(&o, &files), || {
            format!(
                "{}  with spec.toml =\n{}\n    train.csv = {:?}\n    test.csv = {:?}",
                shell(&args),
                indent(&c.spec),
                c.train_csv,
                c.test_csv
            )
        });
    }
    tally.finish("spirals", t0);
}

// ---------------------------------------------------------------------------------------
// Train flags.

#[derive(Debug, Clone)]
struct TrainCase {
    flags: Vec<(&'static str, String)>,
}

fn train_case() -> BoxedStrategy<TrainCase> {
    const PRESETS: &[&str] = &["chizat-julia", "chizat-python", "lazy", "standard"];
    const ACTS: &[&str] = &["tanh", "relu", "gelu", "softplus", "linear"];
    let opt = |s: BoxedStrategy<String>, p: f64| prop::option::weighted(p, s);
    // Absent dimension flags take the defaults (L = 10, M = D = 50, N = 10, 15 steps):
    // still well under a second.
    (
        (
            opt(int_arg(), 0.8),
            opt(int_arg(), 0.8),
            opt(int_arg(), 0.8),
            opt(int_arg(), 0.8),
            opt(int_arg(), 0.6),
            opt(int_arg(), 0.6),
        ),
        (
            opt(int_arg(), 0.9),
            opt(float_arg(), 0.5),
            opt(float_arg(), 0.4),
            opt(word_arg(ACTS), 0.4),
            opt(word_arg(PRESETS), 0.4),
            opt(word_arg(&["f64", "f32"]), 0.4),
            opt(
                prop_oneof![
                    3 => (0u64..5).prop_map(|v| v.to_string()),
                    1 => prop::sample::select(vec!["18446744073709551615", "18446744073709551616", "-1", "x"])
                        .prop_map(String::from),
                ]
                .boxed(),
                0.3,
            ),
        ),
    )
        .prop_map(|((l, m, d, n, din, dout), (steps, lr, alpha, act, preset, dtype, seed))| {
            let mut flags = Vec::new();
            for (name, v) in [
                ("--L", l),
                ("--M", m),
                ("--D", d),
                ("--N", n),
                ("--din", din),
                ("--dout", dout),
                ("--steps", steps),
                ("--lr", lr),
                ("--alpha", alpha),
                ("--activation", act),
                ("--preset", preset),
                ("--dtype", dtype),
                ("--seed", seed),
            ] {
                if let Some(v) = v {
                    flags.push((name, v));
                }
            }
            TrainCase { flags }
        })
        .boxed()
}

fn train_args(flags: &[(&'static str, String)]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["train".into(), "--out".into(), "out".into()];
    for (k, v) in flags {
        // `--flag=value` so that values starting with '-' stay values.
        args.push(format!("{k}={v}").into());
    }
    args
}

#[test]
fn fuzz_train_cli() {
    let t0 = Instant::now();
    let mut tally = Tally::default();
    for (i, c) in draw("train", train_case(), cases(2500))
        .into_iter()
        .enumerate()
    {
        let dir = CaseDir::new("train", i);
        let args = train_args(&c.flags);
        let o = run_cli(&dir.0, &args);
        tally.record(judge(&o, &["out"]), || shell(&args));
    }
    tally.finish("train", t0);
}

// ---------------------------------------------------------------------------------------
// NPY files.

/// How one NPY file is written: a real array, then a mangled header or body.
#[derive(Debug, Clone)]
struct NpySpec {
    magic: &'static [u8],
    version: u8,
    descr: &'static str,
    fortran: &'static str,
    /// `None`: the true shape.
    shape: Option<String>,
    /// Bytes of the body relative to the true one: `None` keeps it, else truncate or pad.
    body: BodyEdit,
    /// Added to the header length field (a lie).
    hlen_delta: i64,
    /// Drop a header key entirely.
    drop_key: Option<&'static str>,
    /// Write raw bytes instead.
    raw: Option<Vec<u8>>,
    /// Fill with a non-finite value.
    nonfinite: bool,
}

#[derive(Debug, Clone)]
enum BodyEdit {
    Keep,
    Cut(usize),
    Pad(usize),
    Empty,
}

fn npy_spec() -> BoxedStrategy<NpySpec> {
    let magic = prop_oneof![
        12 => Just(&b"\x93NUMPY"[..]),
        1 => Just(&b"\x93NUMPX"[..]),
        1 => Just(&b"NUMPY"[..]),
        1 => Just(&b""[..]),
    ];
    let version = prop_oneof![
        6 => Just(1u8),
        2 => Just(2u8),
        2 => Just(3u8),
        1 => prop::sample::select(vec![0u8, 4, 255]),
    ];
    let descr = prop_oneof![
        8 => prop::sample::select(vec!["<f8", "'<f8'", "'>f8'", "'<f4'", "'>f4'", "'=f8'", "'f4'"]),
        1 => prop::sample::select(vec![
            "'<i8'", "'|u1'", "'<c16'", "'<f2'", "'<f8", "<f8'", "''", "'O'", "[('a', '<f8')]",
        ]),
    ];
    let fortran = prop_oneof![
        6 => Just("False"),
        2 => Just("True"),
        1 => prop::sample::select(vec!["false", "1", "", "Tru"]),
    ];
    let shape = prop_oneof![
        8 => Just(None),
        3 => prop::sample::select(vec![
            "(0,)", "(0, 0)", "(2305843009213693952,)", "(2305843009213693952, 3)",
            "(4294967296, 4294967296)", "(4294967296, 4294967296, 1)",
            "(2147483648, 2147483648)", "(3074457345618258603, 3)",
            "(18446744073709551615,)", "(18446744073709551616,)", "(9223372036854775807, 2)",
            "(-1, 2)", "(2, x)", "()", "(1, 1)", "(2, 2, 2, 2)", "(2,2,2)", "2, 2", "(2,",
            "(1, 2305843009213693952, 8)", "(2305843009213693952, 8, 1)",
            "(0, 2305843009213693952)",
        ]).prop_map(|s| Some(s.to_string())),
    ];
    let body = prop_oneof![
        10 => Just(BodyEdit::Keep),
        1 => (1usize..9).prop_map(BodyEdit::Cut),
        1 => (1usize..9).prop_map(BodyEdit::Pad),
        1 => Just(BodyEdit::Empty),
    ];
    let hlen_delta = prop_oneof![
        10 => Just(0i64),
        1 => prop::sample::select(vec![-1i64, -10, 1, 7, 100, 1 << 20, 1 << 33, -1000]),
    ];
    let drop_key = prop_oneof![
        10 => Just(None),
        1 => prop::sample::select(vec![Some("descr"), Some("fortran_order"), Some("shape")]),
    ];
    let raw = prop_oneof![
        30 => Just(None),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Some),
    ];
    (
        (magic, version, descr, fortran, shape),
        (body, hlen_delta, drop_key, raw, prop::bool::weighted(0.05)),
    )
        .prop_map(
            |(
                (magic, version, descr, fortran, shape),
                (body, hlen_delta, drop_key, raw, nonfinite),
            )| {
                NpySpec {
                    magic,
                    version,
                    descr,
                    fortran,
                    shape,
                    body,
                    hlen_delta,
                    drop_key,
                    raw,
                    nonfinite,
                }
            },
        )
        .boxed()
}

/// The bytes of an array of `shape` (C order) written per `s`.
fn npy_bytes(shape: &[usize], s: &NpySpec) -> Vec<u8> {
    if let Some(r) = &s.raw {
        return r.clone();
    }
    let descr = if s.descr.starts_with('\'') || s.descr.starts_with('[') {
        s.descr.to_string()
    } else {
        format!("'{}'", s.descr)
    };
    let true_shape = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let shape_s = s.shape.clone().unwrap_or(true_shape);
    let mut fields = vec![
        ("descr", descr.clone()),
        ("fortran_order", s.fortran.to_string()),
        ("shape", shape_s),
    ];
    if let Some(k) = s.drop_key {
        fields.retain(|(f, _)| *f != k);
    }
    let mut header = String::from("{");
    for (k, v) in &fields {
        let _ = write!(header, "'{k}': {v}, ");
    }
    header.push('}');
    let pre = s.magic.len() + 2 + if s.version == 1 { 2 } else { 4 };
    while !(pre + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let hlen = (header.len() as i64 + s.hlen_delta).max(0) as u64;
    let mut out = Vec::new();
    out.extend_from_slice(s.magic);
    out.push(s.version);
    out.push(0);
    if s.version == 1 {
        out.extend_from_slice(&(hlen.min(u16::MAX as u64) as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(hlen.min(u32::MAX as u64) as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    let count: usize = shape.iter().product();
    let big = descr.contains('>');
    let f4 = descr.contains("f4");
    for i in 0..count {
        let v = if s.nonfinite && i == 0 {
            f64::NAN
        } else {
            0.1 * ((i % 7) as f64) - 0.3
        };
        match (f4, big) {
            (false, false) => out.extend_from_slice(&v.to_le_bytes()),
            (false, true) => out.extend_from_slice(&v.to_be_bytes()),
            (true, false) => out.extend_from_slice(&(v as f32).to_le_bytes()),
            (true, true) => out.extend_from_slice(&(v as f32).to_be_bytes()),
        }
    }
    match s.body {
        BodyEdit::Keep => {}
        BodyEdit::Cut(k) => {
            let n = out.len().saturating_sub(k);
            out.truncate(n);
        }
        BodyEdit::Pad(k) => out.extend(std::iter::repeat_n(0u8, k)),
        BodyEdit::Empty => {
            let n = out.len() - count * if f4 { 4 } else { 8 };
            out.truncate(n);
        }
    }
    out
}

/// The six files of `train --init-npy` with their shapes for L = 2, M = 3, D = 2,
/// din = 2, dout = 1, N = 3.
const INIT_FILES: [(&str, &[usize]); 6] = [
    ("X.npy", &[2, 3]),
    ("Y.npy", &[1, 3]),
    ("WE.npy", &[2, 2]),
    ("WU.npy", &[2, 1]),
    ("U.npy", &[2, 2, 3]),
    ("V.npy", &[2, 2, 3]),
];

#[derive(Debug, Clone)]
struct InitCase {
    /// (file index, how it is written): at most a few files are mangled.
    edits: Vec<(usize, NpySpec)>,
    /// Files replaced by a directory or missing.
    missing: Option<usize>,
    as_dir: Option<usize>,
    flags: Vec<(&'static str, String)>,
}

fn valid_npy() -> NpySpec {
    NpySpec {
        magic: b"\x93NUMPY",
        version: 1,
        descr: "<f8",
        fortran: "False",
        shape: None,
        body: BodyEdit::Keep,
        hlen_delta: 0,
        drop_key: None,
        raw: None,
        nonfinite: false,
    }
}

fn init_case() -> BoxedStrategy<InitCase> {
    let flag = prop_oneof![
        prop::sample::select(vec!["--L", "--M", "--D", "--N", "--din", "--dout"])
            .prop_flat_map(|k| int_arg().prop_map(move |v| (k, v))),
        prop::sample::select(vec!["--dtype"])
            .prop_flat_map(|k| { word_arg(&["f64", "f32"]).prop_map(move |v| (k, v)) }),
    ];
    (
        prop::collection::vec((0usize..6, npy_spec()), 0..3),
        prop::option::weighted(0.05, 0usize..6),
        prop::option::weighted(0.03, 0usize..6),
        prop::collection::vec(flag, 0..2),
        prop::sample::select(vec!["1", "2", "3"]),
    )
        .prop_map(|(edits, missing, as_dir, mut flags, steps)| {
            flags.push(("--steps", steps.to_string()));
            InitCase {
                edits,
                missing,
                as_dir,
                flags,
            }
        })
        .boxed()
}

fn write_init_dir(dir: &Path, c: &InitCase) {
    for (i, (name, shape)) in INIT_FILES.iter().enumerate() {
        let p = dir.join(name);
        if c.missing == Some(i) {
            continue;
        }
        if c.as_dir == Some(i) {
            std::fs::create_dir_all(&p).unwrap();
            continue;
        }
        let spec = c
            .edits
            .iter()
            .rev()
            .find(|(j, _)| *j == i)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(valid_npy);
        std::fs::write(&p, npy_bytes(shape, &spec)).unwrap();
    }
}

#[test]
fn fuzz_init_npy_cli() {
    let t0 = Instant::now();
    let mut tally = Tally::default();
    for (i, c) in draw("init-npy", init_case(), cases(2500))
        .into_iter()
        .enumerate()
    {
        let dir = CaseDir::new("npy", i);
        let init = dir.0.join("init");
        std::fs::create_dir_all(&init).unwrap();
        write_init_dir(&init, &c);
        let mut args: Vec<OsString> = vec![
            "train".into(),
            "--init-npy".into(),
            "init".into(),
            "--out".into(),
            "out".into(),
        ];
        for (k, v) in &c.flags {
            args.push(format!("{k}={v}").into());
        }
        let o = run_cli(&dir.0, &args);
        let mut files = vec!["init", "out"];
        files.extend(INIT_FILES.iter().map(|(n, _)| *n));
        tally.record(judge(&o, &files), || {
            let mut s = shell(&args);
            for (j, e) in &c.edits {
                let _ = write!(s, "\n      {} written as {:?}", INIT_FILES[*j].0, e);
            }
            if let Some(m) = c.missing {
                let _ = write!(s, "\n      {} missing", INIT_FILES[m].0);
            }
            if let Some(m) = c.as_dir {
                let _ = write!(s, "\n      {} is a directory", INIT_FILES[m].0);
            }
            s
        });
    }
    tally.finish("init-npy", t0);
}

// ---------------------------------------------------------------------------------------
// In process: the readers and checks called directly, under catch_unwind.

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic)".into())
}

#[test]
fn fuzz_read_npy_in_process() {
    let t0 = Instant::now();
    let mut tally = Tally::default();
    let dir = CaseDir::new("npy-inproc", 0);
    let shapes: [&[usize]; 5] = [&[3], &[2, 3], &[2, 2, 3], &[1, 1], &[0]];
    let s = (0usize..shapes.len(), npy_spec());
    for (i, (k, spec)) in draw("read-npy", s, cases(20000)).into_iter().enumerate() {
        let p = dir.0.join(format!("a{}.npy", i % 8));
        std::fs::write(&p, npy_bytes(shapes[k], &spec)).unwrap();
        let path = p.to_str().unwrap().to_string();
        let r = std::panic::catch_unwind(|| reslim::io::read_npy(&p));
        let res = match r {
            Err(e) => Err((Kind::Panic, panic_message(&*e))),
            Ok(Ok(a)) => {
                let n = a.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if n != Some(a.data.len()) {
                    Err((
                        Kind::Accepted,
                        format!("accepted shape {:?} with {} values", a.shape, a.data.len()),
                    ))
                } else {
                    Ok(())
                }
            }
            Ok(Err(e)) => {
                let m = e.to_string();
                if m.contains(&path) {
                    Ok(())
                } else {
                    Err((Kind::UnnamedError, m))
                }
            }
        };
        tally.record(res, || format!("shape {:?} written as {spec:?}", shapes[k]));
    }
    tally.finish("read_npy (in process)", t0);
}

/// Whether `check()` may run in process: no allocation that the sizes could make huge
/// (an allocation failure aborts the whole test binary; the CLI families cover those),
/// and no limit solve (real work).
fn sweep_check_is_bounded(s: &reslim::sweep::SweepSpec) -> bool {
    use reslim::sweep::{Axis, ReferenceSpec};
    let small = |v: usize| v <= 1 << 12;
    let axis_ok = |a: &Axis| match a {
        Axis::List(_) => true,
        Axis::Logspace {
            logspace: (_, _, n),
        } => small(*n),
    };
    small(s.data.din)
        && small(s.data.dout)
        && small(s.data.n)
        && axis_ok(&s.grid.l)
        && axis_ok(&s.grid.m)
        && axis_ok(&s.grid.d)
        && !matches!(s.reference, ReferenceSpec::Limit { .. })
}

#[test]
fn fuzz_specs_in_process() {
    let t0 = Instant::now();
    let mut tally = Tally::default();
    let mut checked = 0usize;
    for text in draw("sweep-spec", sweep_text(), cases(20000)) {
        let r = std::panic::catch_unwind(|| {
            let spec: reslim::sweep::SweepSpec = match toml::from_str(&text) {
                Ok(s) => s,
                // The CLI adds the file's path; here the message must name the key.
                Err(e) => return Err((e.to_string(), false)),
            };
            if !sweep_check_is_bounded(&spec) {
                return Ok(false);
            }
            match spec.check() {
                Ok(_) => Ok(true),
                Err(e) => Err((e.to_string(), true)),
            }
        });
        let res = match r {
            Err(p) => Err((Kind::Panic, panic_message(&*p))),
            Ok(Ok(c)) => {
                checked += usize::from(c);
                Ok(())
            }
            Ok(Err((m, c))) => {
                checked += usize::from(c);
                // Syntax errors name a line, not a key: those are fine with the path the
                // CLI adds; field errors must name the field.
                if names_field_or_file(&m, &[]) || m.contains("TOML parse error") {
                    Ok(())
                } else {
                    Err((Kind::UnnamedError, m))
                }
            }
        };
        tally.record(res, || format!("SweepSpec from\n{}", indent(&text)));
    }
    eprintln!("fuzz sweep spec (in process): {checked} specs reached check()");
    let dir = CaseDir::new("spirals-inproc", 0);
    for (i, c) in draw("spirals-spec", spirals_case(), cases(20000))
        .into_iter()
        .enumerate()
    {
        let sub = dir.0.join(format!("c{}", i % 4));
        let _ = std::fs::remove_dir_all(&sub);
        std::fs::create_dir_all(&sub).unwrap();
        write_spirals_case(&sub, &c);
        let r = std::panic::catch_unwind(|| {
            let spec: reslim::meanfield::ExperimentSpec = match toml::from_str(&c.spec) {
                Ok(s) => s,
                Err(e) => return Err(e.to_string()),
            };
            spec.check(&sub).map(|_| ()).map_err(|e| e.to_string())
        });
        let res = match r {
            Err(p) => Err((Kind::Panic, panic_message(&*p))),
            Ok(Ok(())) => Ok(()),
            Ok(Err(m)) => {
                if names_field_or_file(&m, &[]) || m.contains("TOML parse error") {
                    Ok(())
                } else {
                    Err((Kind::UnnamedError, m))
                }
            }
        };
        tally.record(res, || {
            format!(
                "ExperimentSpec from\n{}\n    train.csv = {:?}\n    test.csv = {:?}",
                indent(&c.spec),
                c.train_csv,
                c.test_csv
            )
        });
    }
    tally.finish("specs (in process)", t0);
}
