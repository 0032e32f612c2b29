//! `kubectl mtls`: the kubectl plugin (binary `kubectl-mtls`, src/bin/kubectl-mtls.rs). It talks
//! to the cluster with the user's kubeconfig and RBAC and shares the operator's types and pure
//! core: `status` (authorities, rotations and what holds them, identities not Ready), `inspect`
//! (a Secret's chain, decoded; never key material), `check` (would a handshake between two
//! identities succeed now), `renew` (through the operator: the `mtls.io/renew-requested`
//! annotation), `rotate` / `rollback` (the authority's `spec.rotation`), `completion`.
//!
//! Uses `api`, `core` and the operator's names in `controllers`; never `process`.

mod act;
mod inspect;
mod status;

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::{Context as _, anyhow};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::Serialize;

const EXAMPLES: &str = "\
Examples:
  kubectl mtls status                              every authority, its rotation and what holds it
  kubectl mtls status --authority default -o json  one authority, for scripts
  kubectl mtls inspect identity shop/web           the certificate an identity holds, decoded
  kubectl mtls check shop/web shop/db              would web (client) and db (server) handshake now?
  kubectl mtls renew -n shop --all --wait          re-issue every identity in shop, fresh keys
  kubectl mtls rotate default --wait               rotate the CA, follow the phases until Stable
  kubectl mtls rollback default --yes              reverse the rotation in flight
  source <(kubectl mtls completion bash)           shell completion";

/// See, check and steer mtls-operator identities and CA rotations.
#[derive(Parser, Debug)]
#[command(name = "kubectl-mtls", bin_name = "kubectl mtls", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace for NAME arguments without NS/ (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Namespace the operator runs in (its leader-election Lease and CA Secrets).
    #[arg(long, global = true, default_value = "mtls-system", env = "MTLS_OPERATOR_NAMESPACE")]
    pub operator_namespace: String,
    /// Name of the operator's leader-election Lease (chart value leaderElection.leaseName).
    #[arg(long, global = true, default_value = "mtls-operator")]
    pub lease_name: String,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Authorities (phase, CAs, bundle rollout, rotation and what holds it), identities not Ready
    /// grouped by reason, and the identities expiring soonest.
    #[command(
        after_help = "Examples:\n  kubectl mtls status\n  kubectl mtls status --authority default\n  kubectl mtls status -o yaml"
    )]
    Status(StatusArgs),
    /// Decode what an identity's Secret holds: chain, SPIFFE ID, SANs, key type, serial,
    /// validity, issuer and the bundle versions that trust it. Never prints key material.
    #[command(subcommand)]
    Inspect(InspectTarget),
    /// Would a handshake between two identities succeed now? FROM connects (client), TO serves
    /// (server). Exit code 0 if both sides accept the other's certificate, 1 if not.
    #[command(
        after_help = "Examples:\n  kubectl mtls check shop/web shop/db\n  kubectl mtls check -n shop web db --server-name db.shop.svc"
    )]
    Check(CheckArgs),
    /// Re-issue now with a fresh key, through the operator (its rate limit applies).
    #[command(
        after_help = "Examples:\n  kubectl mtls renew shop/web\n  kubectl mtls renew -n shop --all --wait\n  kubectl mtls renew -n shop -l app=web"
    )]
    Renew(RenewArgs),
    /// Start a CA rotation (a new spec.rotation.trigger), then follow its phases with --wait.
    #[command(after_help = "Examples:\n  kubectl mtls rotate default\n  kubectl mtls rotate default --yes --wait")]
    Rotate(SteerArgs),
    /// Reverse the rotation in flight, safely, back to the previous CA.
    #[command(after_help = "Examples:\n  kubectl mtls rollback default\n  kubectl mtls rollback default --yes --wait")]
    Rollback(SteerArgs),
    /// Print a shell completion script: `source <(kubectl mtls completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this authority (and its identities).
    #[arg(long)]
    pub authority: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
    /// How many of the soonest-expiring identities to list.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
}

#[derive(Subcommand, Debug)]
pub enum InspectTarget {
    /// An identity Secret (`kubernetes.io/tls`, written by the operator), as NS/NAME or NAME.
    #[command(after_help = "Examples:\n  kubectl mtls inspect secret shop/web-mtls")]
    Secret(InspectArgs),
    /// An MtlsIdentity and the Secret it holds, as NS/NAME or NAME.
    #[command(
        after_help = "Examples:\n  kubectl mtls inspect identity shop/web\n  kubectl mtls inspect identity -n shop web -o json"
    )]
    Identity(InspectArgs),
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// NS/NAME, or NAME in --namespace.
    pub target: String,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The identity that connects (client), NS/NAME or NAME.
    pub from: String,
    /// The identity that serves (server), NS/NAME or NAME.
    pub to: String,
    /// The name the client dials (default: TO's first DNS name; none: SPIFFE ID only).
    #[arg(long)]
    pub server_name: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct RenewArgs {
    /// Identities, NS/NAME or NAME in --namespace.
    pub identities: Vec<String>,
    /// Every identity in --namespace.
    #[arg(long, conflicts_with_all = ["identities", "selector"])]
    pub all: bool,
    /// Identities in --namespace matching this label selector.
    #[arg(short = 'l', long, conflicts_with = "identities")]
    pub selector: Option<String>,
    /// Wait until each is re-issued (a new serial) and Ready.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct SteerArgs {
    /// The MtlsAuthority.
    pub authority: String,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Follow the phases live until the authority is Stable again.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
    Yaml,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::core::duration::parse(s).map_err(|e| e.to_string())
}

/// Runs the plugin; returns the process exit code. Errors are printed here, for a person.
pub async fn main(args: Vec<std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Completion { shell } = cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(shell, &mut cmd, "kubectl-mtls", &mut std::io::stdout());
        return Ok(0);
    }
    let session = Session::connect(&cli.global).await?;
    match cli.command {
        Command::Status(a) => status::run(&session, &a).await,
        Command::Inspect(InspectTarget::Secret(a)) => inspect::secret(&session, &a).await,
        Command::Inspect(InspectTarget::Identity(a)) => inspect::identity(&session, &a).await,
        Command::Check(a) => inspect::check(&session, &a).await,
        Command::Renew(a) => act::renew(&session, &a).await,
        Command::Rotate(a) => act::rotate(&session, &a).await,
        Command::Rollback(a) => act::rollback(&session, &a).await,
        Command::Completion { .. } => unreachable!("handled above"),
    }
}

/// A client for the user's cluster, and what the commands share.
pub struct Session {
    pub client: Client,
    pub namespace: String,
    pub global: Global,
}

impl Session {
    async fn connect(g: &Global) -> anyhow::Result<Self> {
        let options = KubeConfigOptions { context: g.context.clone(), ..Default::default() };
        let config = match &g.kubeconfig {
            Some(path) => {
                let kc =
                    Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
                Config::from_custom_kubeconfig(kc, &options).await
            }
            None => Config::from_kubeconfig(&options).await,
        }
        .context("loading the kubeconfig (set --kubeconfig or KUBECONFIG)")?;
        let namespace = g.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).context("building a client from the kubeconfig")?;
        Ok(Session { client, namespace, global: g.clone() })
    }

    /// `NS/NAME` or `NAME` (in --namespace).
    pub fn split<'a>(&'a self, target: &'a str) -> anyhow::Result<(&'a str, &'a str)> {
        match target.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok((ns, name)),
            Some(_) => Err(anyhow!("{target:?}: expected NAMESPACE/NAME or NAME")),
            None => Ok((self.namespace.as_str(), target)),
        }
    }

    /// The authority `name`; if there is none, the error lists those that exist.
    pub async fn authority(&self, name: &str) -> anyhow::Result<crate::api::MtlsAuthority> {
        let api: Api<crate::api::MtlsAuthority> = Api::all(self.client.clone());
        if let Some(a) = api.get_opt(name).await.map_err(|e| explain(e, "get", "mtlsauthorities.mtls.io", None))? {
            return Ok(a);
        }
        let known: Vec<String> = api
            .list(&Default::default())
            .await
            .map(|l| l.items.iter().map(kube::ResourceExt::name_any).collect())
            .unwrap_or_default();
        let which = if known.is_empty() {
            " (there are none)".to_string()
        } else {
            format!("; there are: {}", known.join(", "))
        };
        Err(anyhow!("no MtlsAuthority named {name:?}{which}"))
    }

    /// Whether the operator is running, from its leader-election Lease.
    pub async fn operator(&self) -> OperatorHealth {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.global.operator_namespace);
        let (ns, name) = (&self.global.operator_namespace, &self.global.lease_name);
        match api.get_opt(name).await {
            Ok(Some(lease)) => {
                let spec = lease.spec.unwrap_or_default();
                let holder = spec.holder_identity.unwrap_or_default();
                let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
                let renewed = spec.renew_time.map(|t| t.0);
                let age = renewed.map(|t| Timestamp::now().duration_since(t).as_secs());
                match age {
                    Some(age) if !holder.is_empty() && age <= duration * 2 => OperatorHealth {
                        running: Some(true),
                        detail: format!("running: {holder} leads (Lease {ns}/{name} renewed {age}s ago)"),
                    },
                    Some(age) => OperatorHealth {
                        running: Some(false),
                        detail: format!(
                            "not running: Lease {ns}/{name} was last renewed {age}s ago{}",
                            if holder.is_empty() { String::new() } else { format!(" by {holder}") }
                        ),
                    },
                    None => OperatorHealth {
                        running: Some(false),
                        detail: format!("not running: Lease {ns}/{name} has never been renewed"),
                    },
                }
            }
            Ok(None) => OperatorHealth {
                running: None,
                detail: format!(
                    "unknown: no Lease {ns}/{name} (the operator is not installed there, or runs without leader election; see --operator-namespace)"
                ),
            },
            Err(e) => {
                OperatorHealth { running: None, detail: format!("unknown: {}", explain(e, "get", "leases", Some(ns))) }
            }
        }
    }
}

/// What the Lease says about the operator; `running` is None when it cannot be told.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct OperatorHealth {
    pub running: Option<bool>,
    pub detail: String,
}

/// A Kubernetes API error, said so that a person knows what to do.
pub fn explain(e: kube::Error, verb: &str, resource: &str, namespace: Option<&str>) -> anyhow::Error {
    let place = namespace.map(|n| format!(" in namespace {n}")).unwrap_or_default();
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            anyhow!("no access: you may not {verb} {resource}{place} ({}); ask for RBAC that allows it", s.message)
        }
        kube::Error::Api(s) if s.code == 401 => {
            anyhow!("not logged in: the API server refused the kubeconfig's credentials ({})", s.message)
        }
        kube::Error::Api(s)
            if s.code == 404
                && resource.contains("mtls")
                && s.message.contains("could not find the requested resource") =>
        {
            anyhow!(
                "the cluster does not serve {resource}: the mtls-operator CRDs are not installed (helm install the chart, or kubectl apply -f crds/)"
            )
        }
        kube::Error::Api(s) => anyhow!("{verb} {resource}{place}: {} ({})", s.message, s.reason),
        other => anyhow!("cannot {verb} {resource}{place}: {other} (is the API server in the kubeconfig reachable?)"),
    }
}

/// Prints `value` as JSON or YAML.
pub fn print_structured<T: Serialize>(value: &T, output: Output) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Output::Yaml => write!(out, "{}", serde_yaml::to_string(value)?)?,
        Output::Text => unreachable!("text is printed by each command"),
    }
    Ok(())
}

/// "in 3h12m" / "4m ago", for a person.
pub fn relative(t: Timestamp, now: Timestamp) -> String {
    let secs = t.duration_since(now).as_secs();
    let a = secs.unsigned_abs();
    // Two units at most: 364d23h, 5h12m, 3m20s.
    let d = match a {
        0..3600 => crate::core::duration::format(Duration::from_secs(a)),
        3600..172800 => crate::core::duration::format(Duration::from_secs(a / 60 * 60)),
        _ => format!("{}d{}h", a / 86400, a % 86400 / 3600),
    };
    if secs >= 0 { format!("in {d}") } else { format!("{d} ago") }
}

/// The first 16 hex digits of a fingerprint, enough to tell CAs apart on a terminal.
pub fn short(fp: &str) -> &str {
    &fp[..fp.len().min(16)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_parses_as_documented() {
        Cli::command().debug_assert();
        // Each example's command is what precedes its description (two spaces or more).
        for line in EXAMPLES.lines().skip(1).filter(|l| !l.contains("source")) {
            let command = line.trim_start().split("  ").next().unwrap();
            let args: Vec<&str> = std::iter::once("kubectl-mtls").chain(command.split_whitespace().skip(2)).collect();
            assert!(Cli::try_parse_from(&args).is_ok(), "example does not parse: {args:?}");
        }
        let c = Cli::try_parse_from(["kubectl-mtls", "renew", "-n", "shop", "--all", "--wait", "--timeout", "90s"])
            .unwrap();
        let Command::Renew(r) = c.command else { panic!() };
        assert!(r.all && r.wait && r.timeout == Duration::from_secs(90));
        assert_eq!(c.global.namespace.as_deref(), Some("shop"));
        assert!(Cli::try_parse_from(["kubectl-mtls", "renew", "a", "--all"]).is_err(), "names and --all conflict");
        assert!(Cli::try_parse_from(["kubectl-mtls", "check", "a"]).is_err(), "check needs two identities");
    }

    #[test]
    fn relative_times_read_naturally() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(relative(now + Duration::from_secs(3600 * 3 + 60), now), "in 3h1m");
        assert_eq!(relative(now - Duration::from_secs(90), now), "1m30s ago");
        assert_eq!(relative(now + Duration::from_secs(86400 * 365 - 9), now), "in 364d23h");
    }
}
