#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pinhook::config::{CertArgs, CheckArgs, Cli, Command, LogFormat, PinArgs, ResolveCmdArgs};
use pinhook::logs::{Flush, LogQueue, Stream};
use pinhook::{audit, certs, check, policy::Policy, server};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // Held to the end of main: dropping it writes out the lines still queued.
    let _log_guard = match init_logging(&cli) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("pinhook: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Pin(args) => return pin(&args),
        Command::Krm(args) => return ExitCode::from(pinhook::krm::run(&args) as u8),
        Command::Serve(args) => serve(args),
        Command::Check(args) => return check(&args),
        Command::Resolve(args) => return resolve(&args),
        Command::Cert(args) => cert(&args),
        Command::Drift(args) => {
            let report = pinhook::drift::run(&args);
            return ExitCode::from(pinhook::drift::print(&args, &report) as u8);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "pinhook failed");
            eprintln!("pinhook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stdout (stderr for the CLI subcommands), JSON by default; audit lines always pass.
///
/// `serve` writes through a queue bounded in bytes and drained by its own thread
/// (`pinhook::logs`), so a slow or stalled log reader never holds a runtime worker. The returned
/// guard writes out what is queued when dropped (waiting a few seconds at most).
fn init_logging(cli: &Cli) -> anyhow::Result<Option<Flush>> {
    let filter = EnvFilter::try_new(format!("{},{}=off", cli.log_level, audit::TARGET))
        .with_context(|| format!("invalid --log-level {:?}", cli.log_level))?;
    if let Command::Serve(args) = &cli.command {
        let (queue, flush) = LogQueue::start(args.log_queue_bytes, std::io::stdout())
            .context("cannot start the log writer thread")?;
        pinhook::logs::install(queue.clone());
        install_logging(
            cli.log_format,
            filter,
            queue.writer(Stream::Log),
            queue.writer(Stream::Audit),
        )?;
        Ok(Some(flush))
    } else {
        install_logging(cli.log_format, filter, std::io::stderr, std::io::stdout)?;
        Ok(None)
    }
}

/// Installs the log layer (filtered, to `logs`) and the audit layer (to `audit_out`).
fn install_logging<L, A>(
    format: LogFormat,
    filter: EnvFilter,
    logs: L,
    audit_out: A,
) -> anyhow::Result<()>
where
    L: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    A: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(logs)
            .boxed(),
        // Field values escaped: a newline in a request-supplied value cannot start a line
        // that reads as an audit record.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .fmt_fields(pinhook::text::log_fields())
            .with_writer(logs)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(audit::layer(audit_out))
        .try_init()
        .context("cannot install the log subscriber")
}

fn serve(args: pinhook::config::ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(server::serve(args))?;
    Ok(())
}

fn check(args: &CheckArgs) -> ExitCode {
    let policy = match &args.policy {
        Some(path) => match Policy::load(path) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("pinhook check: {e}");
                return ExitCode::from(check::EXIT_UNREADABLE as u8);
            }
        },
        None => Policy::default(),
    };
    let report = check::check_files(&policy, &args.files, &args.namespace);
    for line in report.lines() {
        println!("{line}");
    }
    for e in &report.errors {
        eprintln!("pinhook check: {e}");
    }
    let denied = report
        .checked
        .iter()
        .filter(|c| c.decision.outcome() == pinhook::admission::Outcome::Denied)
        .count();
    eprintln!(
        "pinhook check: {} object(s) checked, {denied} would be denied, {} input error(s)",
        report.checked.len(),
        report.errors.len()
    );
    ExitCode::from(report.exit_code() as u8)
}

/// Prints the pinned reference of each image (stdout) or why it cannot be pinned (stderr).
fn resolve(args: &ResolveCmdArgs) -> ExitCode {
    use pinhook::policy::Verdict;
    use pinhook::resolve::{Resolver, Scope};
    let fail = |msg: String| {
        eprintln!("pinhook resolve: {msg}");
        ExitCode::from(2)
    };
    let policy = match &args.policy {
        Some(path) => match Policy::load(path) {
            Ok(p) => p,
            Err(e) => return fail(e.to_string()),
        },
        None => Policy::default(),
    };
    let keyring = match args.registry.keyring() {
        Ok(k) => k,
        Err(e) => return fail(e.to_string()),
    };
    let providers = match args.registry.credential_providers(None) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let metrics = std::sync::Arc::new(pinhook::metrics::Metrics::new());
    let resolver = match Resolver::new(
        policy.registries(),
        &args.registry.resolver_settings(),
        metrics,
    ) {
        Ok(r) => r,
        Err(e) => return fail(format!("{}: {e}", policy.source())),
    };
    let Some(profile) = policy.profile_for(&args.namespace) else {
        return fail(format!(
            "namespace {:?} is exempt from the policy",
            args.namespace
        ));
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let scope = Scope {
        keyring,
        allowed: (!profile.allowed_registries.is_empty())
            .then(|| profile.allowed_registries.clone()),
        stale_if_error: profile.stale_if_error,
    };
    let mut failed = false;
    for image in &args.images {
        let reference = match profile.judge(image) {
            Verdict::Rejected(reason) => {
                eprintln!("{image}: {}", reason.describe(image));
                failed = true;
                continue;
            }
            Verdict::Exempt => {
                println!("{image}");
                continue;
            }
            Verdict::Accepted(r) => r,
        };
        if reference.is_pinned() || reference.tag().is_none() {
            println!("{image}");
            continue;
        }
        let deadline = std::time::Instant::now() + args.registry.registry_timeout * 3;
        // Credential providers' credentials come before --registry-config's, as in /mutate.
        let own_scope = match &providers {
            Some(p) if p.matches(&reference) => {
                let provided = runtime.block_on(p.credentials(&reference, None, deadline));
                for f in provided.failures.iter().chain(&provided.not_asked) {
                    eprintln!("{image}: {f}");
                }
                let mut keyring = provided.keyring;
                keyring.extend(scope.keyring.clone());
                Some(Scope {
                    keyring,
                    ..scope.clone()
                })
            }
            _ => None,
        };
        let scope = own_scope.as_ref().unwrap_or(&scope);
        match runtime.block_on(resolver.resolve(&reference, scope, deadline, false)) {
            Ok(r) => println!(
                "{}",
                pinhook::pin::pinned_reference(image, &r.digest, profile.keep_tag)
            ),
            Err(e) => {
                eprintln!("{image}: cannot pin: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Pins manifest files in place (`--check`: reports only); the exit status of pinhook_files.
fn pin(args: &PinArgs) -> ExitCode {
    use pinhook::pin_files::{self, Options};
    let fail = |msg: String| {
        eprintln!("pinhook pin: {msg}");
        ExitCode::from(pin_files::EXIT_UNREADABLE as u8)
    };
    let policy = match &args.policy {
        Some(path) => match Policy::load(path) {
            Ok(p) => p,
            Err(e) => return fail(e.to_string()),
        },
        None => Policy::default(),
    };
    let offline = match pinhook::offline::Offline::new(policy, &args.registry) {
        Ok(o) => o,
        Err(e) => return fail(e.to_string()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    let opts = Options {
        check: args.check,
        refresh: args.refresh,
        namespace: args.namespace.clone(),
    };
    let report = runtime.block_on(pin_files::pin_paths(&offline, &args.paths, &opts));
    for line in &report.lines {
        eprintln!("{line}");
    }
    eprintln!("{}", report.summary(args.check));
    ExitCode::from(report.exit_code(args.check) as u8)
}

fn cert(args: &CertArgs) -> anyhow::Result<()> {
    let c = certs::generate(&args.names, args.days)?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    for (name, pem) in [
        ("ca.crt", &c.ca_pem),
        ("tls.crt", &c.cert_pem),
        ("tls.key", &c.key_pem),
    ] {
        let path = args.out_dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!(
        "wrote ca.crt, tls.crt and tls.key for {:?} to {}",
        args.names,
        args.out_dir.display()
    );
    Ok(())
}
