//! The `reslim` command line: a thin layer that parses flags, calls the library, prints.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use reslim::cpu::Par;
use reslim::model::Dtype;
use reslim::spec::TrainSpec;
use reslim::sweep::{self, SweepDir, SweepSpec};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "reslim",
    version,
    about = "Scaled deep ResNets and their large-scale limits"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once; the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Train one ResNet by full-batch GD and write its run directory.
    Train(Box<TrainArgs>),
    /// Measure the GD step against the machine's roofline (and the NumPy peer if present).
    Bench(BenchArgs),
    /// Run a shape sweep (resumable), collect its errors, fit rates, write its report.
    Sweep(SweepArgs),
    /// A quick sweep (about a minute): trains a small grid and writes its report and plots.
    Quickstart(QuickArgs),
    /// Coordinates of one linear network beside their large-D limit (docs/papers.md 2.5, E3):
    /// trajectories of h and D b against depth, histograms against N(0, Gamma_kk).
    Coords(CoordsArgs),
    /// Coordinate check of a parametrization: train ladders of widths and depths for a few
    /// steps, record per-layer activations, updates, backward signals and outputs, fit
    /// their exponents in width and depth (stable / growing / vanishing), draw mup-style
    /// figures and write report.md.
    Coordcheck(CoordcheckArgs),
    /// Mean-field generalization experiment (docs/papers.md paper 1): train scaled ResNets on
    /// two spirals (or CSV data) for every n_train and seed, then write the report.
    Spirals(SpiralsArgs),
    /// The large-D limit of a spec's network (exact ODEs for linear blocks, Monte Carlo
    /// over single units for any activation): outputs, losses, correlations, figures.
    Limit(LimitArgs),
}

#[derive(Args)]
struct LimitArgs {
    /// The limit spec (TOML), e.g. experiments/limit-e1.toml.
    spec: PathBuf,
    /// Output directory (default runs/<name>-limit); an earlier limit output there is
    /// replaced.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct CoordcheckArgs {
    /// The spec (TOML), e.g. experiments/coordcheck.toml; flags override its fields.
    spec: Option<PathBuf>,
    /// Parametrization preset (chizat-julia, chizat-python, lazy, standard).
    #[arg(long)]
    preset: Option<String>,
    /// Block activation (tanh, relu, gelu, softplus, linear).
    #[arg(long)]
    activation: Option<String>,
    /// The width ladder, e.g. 16,32,64,128,256.
    #[arg(long, value_delimiter = ',')]
    widths: Option<Vec<usize>>,
    /// What the width sets: MD (M = D), M (D fixed by --D) or D (M fixed by --M).
    #[arg(long)]
    vary: Option<String>,
    /// The fixed M with --vary D.
    #[arg(long = "M")]
    m: Option<usize>,
    /// The fixed D with --vary M.
    #[arg(long = "D")]
    d: Option<usize>,
    /// The depth ladder, e.g. 2,4,8,16.
    #[arg(long, value_delimiter = ',')]
    depths: Option<Vec<usize>>,
    /// A ladder of branch scales alpha (default: the table's alpha).
    #[arg(long, value_delimiter = ',')]
    alphas: Option<Vec<f64>>,
    /// GD steps K (default 5).
    #[arg(long)]
    steps: Option<usize>,
    /// Global learning rate eta (default 1).
    #[arg(long)]
    lr: Option<f64>,
    /// Number of seeds (default 3).
    #[arg(long)]
    seeds: Option<usize>,
    /// First seed (default 1).
    #[arg(long)]
    seed: Option<u64>,
    /// Tolerance of the classification (default 0.25).
    #[arg(long)]
    tolerance: Option<f64>,
    /// Output directory (default runs/<name>); an earlier check there is replaced.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct SpiralsArgs {
    /// The experiment spec (TOML), e.g. experiments/spirals-quick.toml.
    spec: PathBuf,
    /// Output directory: runs/*.json (one per run; finished runs are reused), report.md,
    /// figures, summary.json, runs.csv.
    #[arg(long, default_value = "out/spirals")]
    out: PathBuf,
    /// Retrain the stored runs that were made by a different spec, overwriting them.
    /// Without it such an experiment stops and names the changed fields; stale runs are
    /// never used.
    #[arg(long)]
    redo_stale: bool,
    /// Run only the unfinished runs of shard J of N (0 <= J < N, fixed by the spec). Any
    /// number of processes sharing --out may run shards at once; no report (run without
    /// --shard once all are done: it reuses every stored run).
    #[arg(long, value_name = "J/N", conflicts_with = "status")]
    shard: Option<String>,
    /// Print each shard's finished and missing runs (exits 1 if some are missing).
    #[arg(long)]
    status: bool,
    /// Shards for --status (default 1).
    #[arg(long, value_name = "N", default_value_t = 1, requires = "status")]
    shards: usize,
}

#[derive(Args)]
struct CoordsArgs {
    /// Depth.
    #[arg(long = "L", default_value_t = 200)]
    l: usize,
    /// Hidden width.
    #[arg(long = "M", default_value_t = 1000)]
    m: usize,
    /// Embedding dimension.
    #[arg(long = "D", default_value_t = 1000)]
    d: usize,
    /// Seed of U, V (and of W_E, W_U unless --embed-seed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    embed_seed: Option<u64>,
    /// GD steps K of the run and of the limit.
    #[arg(long, default_value_t = 15)]
    steps: usize,
    /// Global learning rate eta.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Branch scale alpha.
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Step of the trajectory plots.
    #[arg(long, default_value_t = 8)]
    step: usize,
    /// Steps of the histograms.
    #[arg(long, value_delimiter = ',', default_value = "0,4,8")]
    hist_steps: Vec<usize>,
    /// The input x (default: the paper's, docs/papers.md 2.5 E2).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    x: Option<Vec<f64>>,
    /// The target y (default: the paper's).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    y: Option<Vec<f64>>,
    /// Output directory.
    #[arg(long, default_value = "runs/coords")]
    out: PathBuf,
    /// Activation of the blocks: linear (the exact limit) or tanh, relu, gelu, softplus
    /// (the Monte-Carlo limit).
    #[arg(long, default_value = "linear")]
    activation: String,
    /// Parametrization preset (the chizat-python family: chizat-python, chizat-julia, lazy).
    #[arg(long, default_value = "chizat-python")]
    preset: String,
    /// Monte-Carlo units per depth point of a nonlinear limit.
    #[arg(long)]
    samples: Option<usize>,
    /// Monte-Carlo replicas of a nonlinear limit.
    #[arg(long)]
    replicas: Option<usize>,
}

#[derive(Args)]
struct SweepArgs {
    /// The sweep spec (TOML), e.g. experiments/paper-nonlinear.toml.
    spec: PathBuf,
    /// Output directory (default: runs/<sweep name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Parallel tasks (default: --threads or all cores); each task runs single-threaded.
    #[arg(long)]
    jobs: Option<usize>,
    /// Print the plan (tasks, memory, work) and exit.
    #[arg(long)]
    plan: bool,
    /// Only collect and report what has finished; train nothing.
    #[arg(long)]
    report_only: bool,
    /// Retrain the finished tasks whose records were made by a different spec (an edited
    /// lr, seed, steps, read_steps, data, ...), overwriting them. Without it such a sweep
    /// stops and names the changed fields; stale records are never used.
    #[arg(long)]
    redo_stale: bool,
    /// Stop after this many tasks (the sweep resumes later where it stopped).
    #[arg(long, hide = true)]
    max_tasks: Option<usize>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `reslim sweep`'s cluster flags (README, "On a cluster").
#[derive(Args, Default)]
struct ClusterArgs {
    /// Run only the unfinished tasks of shard J of N (0 <= J < N; shards are fixed by the
    /// plan). Any number of processes, on any hosts sharing --out, may run shards at
    /// once; no report (run --report-only when all are done).
    #[arg(long, value_name = "J/N", conflicts_with_all = ["report_only", "status", "slurm"])]
    shard: Option<String>,
    /// Print each shard's finished and missing tasks (exits 1 if some are missing).
    #[arg(long, conflicts_with_all = ["plan", "report_only", "slurm"])]
    status: bool,
    /// Shards (with --status, --slurm; default: those of the last --slurm submission,
    /// else 1 for --status and min(tasks, 16) for --slurm).
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Write DIR/slurm/array.sbatch (one element per shard with missing tasks) and
    /// DIR/slurm/collect.sbatch (after the array: status, tables, report), and submit
    /// both with sbatch. Each element uses --jobs cores (default 1).
    #[arg(long, conflicts_with_all = ["plan", "report_only"])]
    slurm: bool,
    /// Slurm partition (--slurm).
    #[arg(long, requires = "slurm")]
    partition: Option<String>,
    /// Slurm account (--slurm).
    #[arg(long, requires = "slurm")]
    account: Option<String>,
    /// Array elements running at once, the %K of --array (--slurm).
    #[arg(long, value_name = "K", requires = "slurm")]
    max_parallel: Option<usize>,
    /// Time limit of each element as Slurm reads it, e.g. 2:00:00 (--slurm; default:
    /// from the work estimate with a safety factor).
    #[arg(long, requires = "slurm")]
    time: Option<String>,
    /// Another #SBATCH option for both scripts, e.g. --sbatch-arg=--qos=long (repeatable).
    #[arg(
        long,
        value_name = "OPTION",
        requires = "slurm",
        allow_hyphen_values = true
    )]
    sbatch_arg: Vec<String>,
    /// A shell line both scripts run before reslim, e.g. 'module load gcc' (repeatable).
    #[arg(long, value_name = "LINE", requires = "slurm")]
    setup: Vec<String>,
    /// With --slurm: write the scripts, submit nothing.
    #[arg(long, requires = "slurm")]
    dry_run: bool,
}

#[derive(Args)]
struct QuickArgs {
    /// Output directory.
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
}

/// The quickstart's sweep spec, shipped in the binary.
const QUICK_SPEC: &str = include_str!("../experiments/quick.toml");

#[derive(Args)]
struct TrainArgs {
    /// A TOML spec file; flags override its fields.
    spec: Option<PathBuf>,
    /// Parametrization preset: chizat-julia, chizat-python, lazy, standard.
    #[arg(long)]
    preset: Option<String>,
    /// Depth (number of blocks).
    #[arg(long = "L", allow_negative_numbers = true)]
    l: Option<i64>,
    /// Hidden width of each block.
    #[arg(long = "M", allow_negative_numbers = true)]
    m: Option<i64>,
    /// Embedding dimension.
    #[arg(long = "D", allow_negative_numbers = true)]
    d: Option<i64>,
    /// Number of training samples.
    #[arg(long = "N", allow_negative_numbers = true)]
    n: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    din: Option<i64>,
    #[arg(long, allow_negative_numbers = true)]
    dout: Option<i64>,
    /// Number of GD steps K.
    #[arg(long, allow_negative_numbers = true)]
    steps: Option<i64>,
    /// Global learning rate eta.
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Branch scale alpha (overrides the preset's).
    #[arg(long, allow_negative_numbers = true)]
    alpha: Option<f64>,
    /// Activation: tanh, relu, gelu, softplus, linear.
    #[arg(long)]
    activation: Option<String>,
    /// Seed of the block weights (and of the embeddings unless --embed-seed).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    embed_seed: Option<u64>,
    #[arg(long)]
    data_seed: Option<u64>,
    /// f64 or f32.
    #[arg(long)]
    dtype: Option<String>,
    /// Start from X, Y, WE, WU, U, V .npy files of this directory.
    #[arg(long)]
    init_npy: Option<PathBuf>,
    /// Record per-layer coordinate statistics (layers.csv).
    #[arg(long)]
    layer_stats: bool,
    /// The GD engine: auto (default: dense, low-rank where cheaper, regenerated when
    /// the stored weights would not fit), dense, lowrank, regenerated.
    #[arg(long)]
    backend: Option<String>,
    /// Output directory.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    /// Depth.
    #[arg(long = "L", default_value_t = 50)]
    l: usize,
    #[arg(long = "N", default_value_t = 10)]
    n: usize,
    /// M = D values.
    #[arg(long, value_delimiter = ',', default_value = "100,500,1000,2000")]
    sizes: Vec<usize>,
    /// Timed steps per shape (after one warm-up).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// f64 or f32.
    #[arg(long, default_value = "f64")]
    dtype: Dtype,
    /// Directory with peer_numpy.py; the peer runs if python3 with numpy and scipy is
    /// available.
    #[arg(long, default_value = "../shared/peers")]
    peers: PathBuf,
    /// Skip the peer even if available.
    #[arg(long)]
    no_peer: bool,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A progress bar on a terminal, plain occasional lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    len: u64,
    label: String,
    last_line: std::time::Instant,
}

impl Progress {
    fn new(len: u64, label: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(len);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta})",
                )
                .expect("valid template"),
            );
            b.set_message(label.to_string());
            b
        });
        Progress {
            bar,
            len,
            label: label.to_string(),
            last_line: std::time::Instant::now(),
        }
    }
    fn set(&mut self, pos: u64, note: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(pos);
                if !note.is_empty() {
                    b.set_message(format!("{} {note}", self.label));
                }
            }
            None => {
                if pos == self.len || self.last_line.elapsed().as_secs_f64() > 5.0 {
                    eprintln!("{}: {pos}/{} {note}", self.label, self.len);
                    self.last_line = std::time::Instant::now();
                }
            }
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(t) = cli.threads {
        if let Err(e) = sweep::check_jobs("--threads", t) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
        {
            eprintln!("error: cannot start {t} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Where the learning rate of each command is set, for the hint after a divergence.
    let lr_field = match &cli.cmd {
        Cmd::Train(_) => Some("'--lr', or 'lr' in the spec"),
        Cmd::Sweep(_) | Cmd::Quickstart(_) => Some("'lr' in the spec"),
        Cmd::Coords(_) => Some("'--lr'"),
        Cmd::Coordcheck(_) => Some("'--lr', or 'lr' in the spec"),
        Cmd::Spirals(_) => Some("'train.lr', or a smaller 'train.backoff'"),
        Cmd::Bench(_) | Cmd::Limit(_) => None,
    };
    let res = match cli.cmd {
        Cmd::Train(a) => cmd_train(*a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Sweep(a) => {
            let spec = SweepSpec::from_file(&a.spec);
            spec.map_err(anyhow::Error::from).and_then(|spec| {
                let out = a
                    .out
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("runs").join(&spec.name));
                cmd_sweep(spec, &out, &a)
            })
        }
        Cmd::Quickstart(q) => {
            let spec: SweepSpec =
                toml::from_str(QUICK_SPEC).expect("the shipped quick spec parses");
            let a = SweepArgs {
                spec: "experiments/quick.toml".into(),
                out: Some(q.out.clone()),
                jobs: None,
                plan: false,
                report_only: false,
                redo_stale: false,
                max_tasks: None,
                cluster: ClusterArgs::default(),
            };
            cmd_sweep(spec, &q.out, &a)
        }
        Cmd::Coords(a) => cmd_coords(a),
        Cmd::Coordcheck(a) => cmd_coordcheck(a),
        Cmd::Limit(a) => cmd_limit(a),
        Cmd::Spirals(a) => cmd_spirals(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once: the library's messages already state their sources.
            eprintln!("error: {}", reslim::error::chain_message(e.as_ref()));
            if let (true, Some(f)) = (diverged(&e), lr_field) {
                eprintln!("hint: lower the learning rate ({f})");
            }
            ExitCode::FAILURE
        }
    }
}

fn cmd_limit(a: LimitArgs) -> Result<()> {
    use reslim::solve::{self, LimitSpec, Method};
    let job = LimitSpec::from_file(&a.spec)?.check()?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-limit", job.spec.name)));
    reslim::io::check_out_dir(&out, "limit.json", "limit output")?;
    let (k, n) = (job.params.k_steps, job.spec.data.n);
    eprintln!(
        "limit '{}': {} blocks, K = {k}, N = {n}, d_in = {}, d_out = {}, {} (num_s = {}{}), needs {:.2} GB",
        job.spec.name,
        job.activation.name(),
        job.spec.data.din,
        job.spec.data.dout,
        match job.method {
            Method::Exact => "exact ODE solver",
            _ => "Monte Carlo",
        },
        job.params.num_s,
        if job.method == Method::MonteCarlo {
            format!(", {} units x {} replicas", job.mc.samples, job.mc.replicas)
        } else {
            String::new()
        },
        job.bytes as f64 / 1e9
    );
    let t0 = std::time::Instant::now();
    let res = solve::solve(&job)?;
    let secs = t0.elapsed().as_secs_f64();
    solve::write(&out, &job, &res)?;
    let last = &res.outputs_se[(k - 1) * job.spec.data.dout * n..];
    let se_rms = (last.iter().map(|v| v * v).sum::<f64>() / last.len().max(1) as f64).sqrt();
    println!(
        "loss {:.6e} -> {:.6e} over {k} passes; standard error of the last outputs (RMS) {:.1e}; solved in {secs:.2} s; results in {}",
        res.losses[0],
        res.losses[k - 1],
        se_rms,
        out.display()
    );
    Ok(())
}

/// Whether a training run diverged somewhere in `e`'s chain of causes.
fn diverged(e: &anyhow::Error) -> bool {
    use reslim::train::TrainError;
    let at = |t: &TrainError| t.diverged_at().is_some();
    // A transparent wrapper's source is its inner error's source, and a boxed cause is
    // its own type: look at all three.
    let train = |c: &reslim::Error| matches!(c, reslim::Error::Train(t) if at(t));
    e.chain().any(|c| {
        c.downcast_ref::<TrainError>().is_some_and(at)
            || c.downcast_ref::<reslim::Error>().is_some_and(train)
            || c.downcast_ref::<Box<reslim::Error>>()
                .is_some_and(|b| train(b))
            || c.downcast_ref::<reslim::sweep::SweepError>()
                .is_some_and(|s| matches!(s, reslim::sweep::SweepError::Train(t) if at(t)))
            || c.downcast_ref::<Box<reslim::sweep::SweepError>>()
                .is_some_and(|s| matches!(**s, reslim::sweep::SweepError::Train(ref t) if at(t)))
    })
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let file = match &a.spec {
        Some(p) => TrainSpec::from_file(p)?,
        None => TrainSpec::default(),
    };
    let mut flags = TrainSpec {
        preset: a.preset,
        activation: a.activation,
        l: a.l,
        m: a.m,
        d: a.d,
        n: a.n,
        din: a.din,
        dout: a.dout,
        steps: a.steps,
        lr: a.lr,
        seed: a.seed,
        embed_seed: a.embed_seed,
        data_seed: a.data_seed,
        dtype: a.dtype,
        init_npy: a.init_npy,
        record_hidden: None,
        layer_stats: a.layer_stats.then_some(true),
        backend: a.backend,
        param: None,
    };
    if let Some(alpha) = a.alpha {
        let mut o = file.param.clone().unwrap_or_default();
        o.alpha = Some(alpha);
        flags.param = Some(o);
    }
    let cfg = file.overridden_by(flags).check()?;
    reslim::run::check_out_dir(&a.out)?;
    let dims = cfg.dims;
    eprintln!(
        "training L={} M={} D={} N={} ({} / {}, {}) for {} steps, eta = {}",
        dims.l,
        dims.m,
        dims.d,
        dims.n,
        cfg.param.name,
        cfg.activation.name(),
        cfg.dtype_name(),
        cfg.steps,
        cfg.eta
    );
    let est = reslim::run::estimate(&cfg, reslim::memory::available()?)?;
    eprintln!("memory: {}", est.line());
    let mut prog = Progress::new(cfg.steps as u64, "train");
    let out = reslim::run::execute_with(
        &cfg,
        &est,
        Par::Rayon,
        &Default::default(),
        &mut |k, loss| prog.set(k as u64 + 1, &format!("loss {loss:.4e}")),
    )?;
    prog.finish();
    reslim::run::write_run_dir(&a.out, &cfg, &out)?;
    let h = &out.history;
    println!(
        "loss {:.6e} -> {:.6e} in {} steps ({:.3} s/step); results in {}",
        h.losses.first().copied().unwrap_or(f64::NAN),
        h.losses.last().copied().unwrap_or(f64::NAN),
        h.losses.len(),
        out.timings.per_step_s,
        a.out.display()
    );
    Ok(())
}

fn cmd_spirals(a: SpiralsArgs) -> Result<()> {
    use reslim::meanfield::{self, experiment::RunStatus};
    let spec = meanfield::ExperimentSpec::from_file(&a.spec)?;
    let base = a.spec.parent().unwrap_or(Path::new("."));
    let cfg = spec.check(base)?;
    if a.status {
        let st = meanfield::experiment::shard_status(&cfg, &a.out, a.shards)?;
        let mut missing = 0;
        for (shard, done, miss) in &st {
            missing += miss.len();
            let ids: Vec<String> = miss.iter().map(|(n, k)| format!("n{n}-k{k}")).collect();
            println!(
                "shard {shard}: {}/{} finished{}{}",
                done.len(),
                done.len() + miss.len(),
                if ids.is_empty() { "" } else { "; missing: " },
                ids.join(" ")
            );
        }
        anyhow::ensure!(
            missing == 0,
            "{missing} run(s) are missing; run them with --shard J/{}",
            a.shards
        );
        println!("all runs finished");
        return Ok(());
    }
    let shard = a
        .shard
        .as_deref()
        .map(reslim::shard::Shard::parse)
        .transpose()?;
    let total = match shard {
        Some(s) => meanfield::experiment::shard_runs(&cfg, s).len(),
        None => cfg.n_train.len() * cfg.seeds,
    };
    eprintln!(
        "{}: {} runs (n_train {:?} x {} seeds), L={} M={} M0={}, {} threads",
        cfg.name,
        total,
        cfg.n_train,
        cfg.seeds,
        cfg.l,
        cfg.m,
        cfg.m0,
        rayon::current_num_threads()
    );
    // Held until the report is written: no second process writes here meanwhile. Then
    // the half-written files of killed runs of this host go.
    // A shard shares it with other shards ([`meanfield::experiment::run_shard`]).
    let _lock = match shard {
        Some(_) => reslim::io::DirLock::acquire_shared(&a.out)?,
        None => reslim::io::DirLock::acquire(&a.out)?,
    };
    reslim::io::remove_stale_temps(&a.out, 2);
    let t0 = std::time::Instant::now();
    let prog = std::sync::Mutex::new((0u64, Progress::new(total as u64, &cfg.name)));
    let reused = std::sync::atomic::AtomicUsize::new(0);
    let replaced = std::sync::atomic::AtomicUsize::new(0);
    let runs =
        meanfield::experiment::run_shard(&cfg, &a.out, shard, a.redo_stale, &|r, status| {
            let mut p = prog.lock().unwrap_or_else(|e| e.into_inner());
            p.0 += 1;
            let note = format!(
                "n={} k={}: test error {:.4}, {} steps{}",
                r.n,
                r.k,
                r.last().test_error,
                r.steps,
                if status == RunStatus::Reused {
                    " (stored)"
                } else {
                    ""
                }
            );
            match status {
                RunStatus::Reused => {
                    reused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                RunStatus::Replaced => {
                    replaced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                RunStatus::Done => {}
            }
            let done = p.0;
            p.1.set(done, &note);
        })?;
    prog.lock().unwrap_or_else(|e| e.into_inner()).1.finish();
    let replaced = replaced.into_inner();
    if replaced > 0 {
        eprintln!(
            "note: {replaced} stored run(s) were unusable (unreadable, incomplete, or made by another spec) and were trained again"
        );
    }
    if let Some(s) = shard {
        println!(
            "shard {s}: {} run(s) finished; report with `reslim spirals {} --out {}` once every shard is done",
            runs.len(),
            a.spec.display(),
            a.out.display()
        );
        return Ok(());
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let wall = t0.elapsed().as_secs_f64();
    let s =
        meanfield::report::write_report(&cfg, &runs, &a.out, &command, wall, reused.into_inner())?;
    if let Some(f) = &s.fit {
        println!(
            "test error ~ n^b: b = {:.3} ± {:.3} (95% CI [{:.3}, {:.3}], p = {:.2e}, R^2 = {:.3})",
            f.slope, f.slope_se, f.slope_ci95.0, f.slope_ci95.1, f.p_value, f.r2
        );
    }
    println!(
        "{:.1} s; report in {}",
        wall,
        a.out.join("report.md").display()
    );
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    use reslim::bench;
    let spec = bench::TableSpec {
        l: a.l,
        n: a.n,
        sizes: a.sizes.clone(),
        steps: a.steps,
        peers: (!a.no_peer).then(|| a.peers.clone()),
    };
    eprintln!("measuring memory bandwidth and compute peak...");
    let mut print = |line: &str| println!("{line}");
    let table = match a.dtype {
        Dtype::F64 => bench::table::<f64>(&spec, Par::Rayon, &mut print)?,
        Dtype::F32 => bench::table::<f32>(&spec, Par::Rayon, &mut print)?,
    };
    if let Some(p) = &a.json {
        reslim::io::atomic_write(p, serde_json::to_string_pretty(&table)?.as_bytes())?;
    }
    Ok(())
}

fn cmd_sweep(spec: SweepSpec, out: &Path, a: &SweepArgs) -> Result<()> {
    let jobs = a.jobs.map(|j| sweep::check_jobs("--jobs", j)).transpose()?;
    let sw = spec.check()?;
    let dir = SweepDir::new(out);
    let c = &a.cluster;
    if c.status || c.slurm {
        return cmd_sweep_cluster(&sw, &dir, a, jobs);
    }
    let shard = c
        .shard
        .as_deref()
        .map(reslim::shard::Shard::parse)
        .transpose()?;
    let opts = sweep::PipelineOptions {
        jobs,
        shard,
        max_tasks: a.max_tasks,
        redo_stale: a.redo_stale,
        report_only: a.report_only,
        plan_only: a.plan,
        memory: None,
        cancel: Default::default(),
    };
    let shown = SweepProgress {
        redo_stale: a.redo_stale,
        trains: !(a.plan || a.report_only),
        bar: std::sync::Mutex::new(None),
    };
    match sweep::execute(&sw, &dir, &opts, &shown)? {
        sweep::Outcome::Planned { entries, .. } => {
            for e in entries {
                println!("{}\t{}\t{:.3e} bytes", e.task.id(), e.state, e.bytes as f64);
            }
        }
        sweep::Outcome::Done { report, .. } => println!("report: {}", report.display()),
        sweep::Outcome::Shard { plan, run } => println!(
            "shard {}: ran {} task(s), {} of its {} tasks finished",
            shard.map(|s| s.to_string()).unwrap_or_default(),
            run.ran,
            run.skipped + run.ran,
            plan.tasks
        ),
    }
    Ok(())
}

/// `reslim sweep --status` and `reslim sweep --slurm`.
fn cmd_sweep_cluster(
    sw: &sweep::Sweep,
    dir: &SweepDir,
    a: &SweepArgs,
    jobs: Option<usize>,
) -> Result<()> {
    use sweep::cluster;
    let c = &a.cluster;
    let shards = match c.shards.or_else(|| cluster::submitted_shards(dir)) {
        Some(n) => n,
        None if c.slurm => sw.plan().len().clamp(1, 16),
        None => 1,
    };
    let statuses = cluster::status(sw, dir, shards)?;
    let missing: usize = statuses.iter().map(|s| s.missing.len()).sum();
    let total: usize = statuses.iter().map(|s| s.tasks.len()).sum();
    if c.status {
        for s in &statuses {
            let ids: Vec<String> = s.missing.iter().map(|t| t.id()).collect();
            println!(
                "shard {}: {}/{} finished{}{}",
                s.shard,
                s.done,
                s.tasks.len(),
                if ids.is_empty() { "" } else { "; missing: " },
                ids.join(" ")
            );
        }
        if missing > 0 {
            let with: Vec<String> = statuses
                .iter()
                .filter(|s| !s.missing.is_empty())
                .map(|s| s.shard.index.to_string())
                .collect();
            anyhow::bail!(
                "{missing} of {total} tasks are missing, in shard(s) {} of {shards}; run them with --shard J/{shards}, or resubmit with --slurm",
                with.join(", ")
            );
        }
        println!("all {total} tasks finished");
        return Ok(());
    }
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let opts = cluster::SlurmOptions {
        shards,
        max_parallel: c.max_parallel,
        cpus: jobs.unwrap_or(1),
        partition: c.partition.clone(),
        account: c.account.clone(),
        time: c.time.clone(),
        sbatch_args: c.sbatch_arg.clone(),
        setup: c.setup.clone(),
        reslim: std::env::current_exe()?,
        spec: abs(&a.spec),
        workdir: std::env::current_dir()?,
        redo_stale: a.redo_stale,
    };
    let dir = SweepDir::new(&abs(&dir.root));
    if missing == 0 {
        eprintln!(
            "all {total} tasks are finished; nothing to submit (reslim sweep {} --out {} --report-only writes the report)",
            a.spec.display(),
            dir.root.display()
        );
        return Ok(());
    }
    let files = cluster::slurm_files(sw, &dir, &statuses, &opts)?;
    eprintln!(
        "sweep '{}': {total} tasks in {shards} shard(s), {missing} missing; array elements {:?}, {} core(s), --mem={}M, --time={}{}",
        sw.spec.name,
        files.elements,
        opts.cpus,
        files.mem_mib,
        files.time,
        if files.time_estimated {
            " (estimated)"
        } else {
            ""
        }
    );
    println!("{}", files.array_path.display());
    println!("{}", files.collect_path.display());
    if c.dry_run {
        eprintln!("dry run: nothing submitted");
        return Ok(());
    }
    if let Some(s) = cluster::submit(&dir, &files)? {
        println!(
            "array job {} (shards {:?} of {})",
            s.array_job, s.elements, s.shards
        );
        println!("collect job {} (after the array)", s.collect_job);
    }
    Ok(())
}

/// What `reslim sweep` shows while the pipeline runs: the plan, warnings, a progress bar.
struct SweepProgress {
    redo_stale: bool,
    /// Whether tasks will run (a bar is shown from the plan on).
    trains: bool,
    bar: std::sync::Mutex<Option<Progress>>,
}

impl SweepProgress {
    const UNITS: u64 = 1000;
}

impl sweep::Observer for SweepProgress {
    fn planned(&self, p: &sweep::PlanSummary) {
        eprintln!(
            "sweep '{}': {} tasks ({} finished), {:.3e} parameter-steps of work, largest task needs {:.2} GB, {} parallel job(s)",
            p.name,
            p.tasks,
            p.finished,
            p.work,
            p.largest_bytes as f64 / 1e9,
            p.jobs
        );
        for (t, why) in &p.corrupt {
            eprintln!(
                "warning: task {} has unusable records and will be redone: {why}",
                t.id()
            );
        }
        if p.stale > 0 {
            eprintln!(
                "{}: {} finished task(s) were made by a different spec ({}); they are not used{}",
                if self.redo_stale { "note" } else { "warning" },
                p.stale,
                p.stale_fields.join("; "),
                if self.redo_stale {
                    " and will be retrained"
                } else {
                    ""
                }
            );
        }
        if self.trains {
            *self.bar.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(Progress::new(Self::UNITS, "sweep"));
        }
    }

    fn progress(&self, done: f64, total: f64, t: &sweep::Task) {
        let pos = if total > 0.0 {
            (done / total * Self::UNITS as f64) as u64
        } else {
            Self::UNITS
        };
        let mut bar = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        bar.get_or_insert_with(|| Progress::new(Self::UNITS, "sweep"))
            .set(pos, &t.id());
    }

    fn ran(&self, s: &sweep::RunSummary) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            b.finish();
        }
        eprintln!(
            "ran {} task(s), skipped {} finished, in {:.1} s{}{}",
            s.ran,
            s.skipped,
            s.seconds,
            if s.redone_stale > 0 {
                format!("; {} stale task(s) retrained", s.redone_stale)
            } else {
                String::new()
            },
            if s.redone_corrupt.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} task(s) with unusable records redone",
                    s.redone_corrupt.len()
                )
            }
        );
    }
}

fn cmd_coordcheck(a: CoordcheckArgs) -> Result<()> {
    use reslim::coordcheck::{self, CoordCheckSpec};
    let file = match &a.spec {
        Some(p) => CoordCheckSpec::from_file(p)?,
        None => CoordCheckSpec::default(),
    };
    let flags = CoordCheckSpec {
        preset: a.preset,
        activation: a.activation,
        widths: a.widths,
        vary: a.vary,
        m: a.m,
        d: a.d,
        depths: a.depths,
        alphas: a.alphas,
        steps: a.steps,
        lr: a.lr,
        seeds: a.seeds,
        seed: a.seed,
        tolerance: a.tolerance,
        ..CoordCheckSpec::default()
    };
    let cfg = file.overridden_by(flags).check()?;
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    eprintln!(
        "coordcheck {}: {} shapes x {} seeds, K = {}",
        cfg.param.name,
        cfg.shapes().len(),
        cfg.seeds.len(),
        cfg.steps
    );
    let cc = coordcheck::run(&cfg)?;
    coordcheck::write(&cc, &out)?;
    println!("{}", coordcheck::verdict_table(&cc));
    println!(
        "{} networks in {:.1} s; report: {}",
        cc.shapes.len() * cfg.seeds.len(),
        cc.seconds,
        out.join("report.md").display()
    );
    Ok(())
}

fn cmd_coords(a: CoordsArgs) -> Result<()> {
    use reslim::coords::{CoordsSpec, coordinates};
    let d = CoordsSpec::default();
    let activation: reslim::model::Activation = a
        .activation
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--activation: {e}"))?;
    let mc = reslim::limit::MonteCarlo {
        samples: a.samples.unwrap_or(d.mc.samples),
        replicas: a.replicas.unwrap_or(d.mc.replicas),
        ..d.mc.clone()
    };
    let spec = CoordsSpec {
        activation,
        preset: a.preset.clone(),
        mc,
        l: a.l,
        m: a.m,
        d: a.d,
        seed: a.seed,
        embed_seed: a.embed_seed.unwrap_or(a.seed),
        steps: a.steps,
        eta: a.lr,
        alpha: a.alpha,
        traj_step: a.step,
        hist_steps: a.hist_steps,
        x: a.x.unwrap_or(d.x),
        y: a.y.unwrap_or(d.y),
        ..d
    };
    eprintln!(
        "coordinates of L={} M={} D={} ({}, {}) at k={}, histograms at k={:?}",
        spec.l,
        spec.m,
        spec.d,
        spec.preset,
        spec.activation.name(),
        spec.traj_step,
        spec.hist_steps
    );
    let s = coordinates(&spec, &a.out)?;
    for st in &s.stats {
        println!(
            "k={:2} l={:4}: mean h^2 {:.4} (limit {:.4}), mean (Db)^2 {:.4} (limit {:.4}), mean|h-H| {:.4}, mean|Db-B| {:.4}",
            st.step,
            st.layer,
            st.mean_sq_h,
            st.gamma_h,
            st.mean_sq_b,
            st.gamma_b,
            st.mad_h,
            st.mad_b
        );
    }
    println!(
        "k={}: max_l mean|h-H| {:.4}, max_l mean|Db-B| {:.4}; f {:?} vs limit {:?}; {:.1} s; figures in {}",
        spec.traj_step,
        s.traj_mad_h,
        s.traj_mad_b,
        s.f,
        s.f_limit,
        s.seconds,
        a.out.display()
    );
    Ok(())
}
