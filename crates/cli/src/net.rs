//! How every command reaches the network: TLS 1.3 with this node's identity by default,
//! plain TCP only behind `--insecure-plaintext`; and the commands that manage identities
//! and private swarms (`shoal id`, `shoal swarm new`, `shoal swarm admit`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_proto::NodeId;
use shoal_proto::either::Either;
use shoal_proto::tcp::TcpTransport;
use shoal_proto::tls::{
    Identity, Membership, SwarmAuthority, TlsConfig, TlsTransport, format_time,
};

use crate::error::CliError;
use crate::output::outln;

/// The transport of every command: TLS over TCP, or plain TCP when asked.
pub(crate) type Net = Either<TlsTransport<TcpTransport>, TcpTransport>;

/// The flags every networked command takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct SecurityArgs {
    /// This node's key pair and certificate, created on first use. Default:
    /// $XDG_CONFIG_HOME/shoal/identity.pem (or ~/.config/shoal/identity.pem).
    #[arg(long, value_name = "FILE", env = "SHOAL_IDENTITY")]
    identity: Option<PathBuf>,
    /// This node's member certificate of a private swarm (`shoal swarm admit`): only
    /// members of that swarm are accepted, and only they accept this node.
    #[arg(long, value_name = "FILE", env = "SHOAL_MEMBER")]
    member: Option<PathBuf>,
    /// Node ids refused at the handshake, one per line (`#` comments); reread when it
    /// changes.
    #[arg(long, value_name = "FILE")]
    revoked: Option<PathBuf>,
    /// Plain TCP: no encryption, no authentication, no node ids (for measurement and
    /// debugging; both ends must use it).
    #[arg(long, conflicts_with_all = ["member", "revoked"])]
    insecure_plaintext: bool,
}

impl SecurityArgs {
    /// The transport these flags ask for. Says on stderr when it creates an identity and
    /// when it runs without TLS.
    pub(crate) fn transport(&self) -> Result<Net, CliError> {
        if self.insecure_plaintext {
            eprintln!(
                "shoal: warning: --insecure-plaintext: connections are neither encrypted nor \
                 authenticated; anyone on the path can read and change them"
            );
            return Ok(Either::Right(TcpTransport::default()));
        }
        let identity = load_identity(self.identity.as_deref())?;
        let mut config = TlsConfig::new(identity);
        config.membership = self.member.as_deref().map(Membership::load).transpose()?;
        config.revoked = self.revoked.clone();
        Ok(Either::Left(TlsTransport::new(
            TcpTransport::default(),
            config,
        )?))
    }
}

/// This node's id on `net` (`None` on plain TCP).
pub(crate) fn node_id(net: &Net) -> Option<NodeId> {
    match net {
        Either::Left(tls) => Some(tls.node_id()),
        Either::Right(_) => None,
    }
}

/// The private swarm this node is a member of on `net`, if any.
pub(crate) fn swarm_name(net: &Net) -> Option<String> {
    match net {
        Either::Left(tls) => tls.swarm_name().map(str::to_string),
        Either::Right(_) => None,
    }
}

/// Who this node is, for its start-up log line.
pub(crate) fn describe(node: Option<&NodeId>, swarm: Option<&str>) -> String {
    match (node, swarm) {
        (Some(node), Some(swarm)) => format!("TLS as node {node}, member of swarm {swarm:?}"),
        (Some(node), None) => format!("TLS as node {node}, open to any node"),
        (None, _) => "plain TCP (--insecure-plaintext): no TLS, no node ids".to_string(),
    }
}

/// Where the identity lives when `--identity` is not given.
pub(crate) fn default_identity_path() -> Result<PathBuf, CliError> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => {
                return Err(CliError::Usage(
                    "no --identity FILE given and neither XDG_CONFIG_HOME nor HOME is set".into(),
                ));
            }
        },
    };
    Ok(base.join("shoal").join("identity.pem"))
}

/// The identity at `path` (or the default path), created on first use.
fn load_identity(path: Option<&Path>) -> Result<Identity, CliError> {
    let path = match path {
        Some(path) => path.to_path_buf(),
        None => default_identity_path()?,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let (identity, created) = Identity::load_or_create(&path)?;
    if created {
        eprintln!(
            "shoal: created a new identity in {} (node id {})",
            path.display(),
            identity.node_id()
        );
    }
    Ok(identity)
}

/// Creates `dir` (and its parents) readable by this user only, if missing.
fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| CliError::Io {
        what: format!("cannot create folder {}", dir.display()),
        source,
    })
}

/// `shoal id`
#[derive(clap::Args, Debug)]
pub(crate) struct IdArgs {
    /// The identity file (created if missing). Default as for every command.
    #[arg(long, value_name = "FILE", env = "SHOAL_IDENTITY")]
    identity: Option<PathBuf>,
    /// Also check this member certificate against the identity and say which swarm it is
    /// for and until when.
    #[arg(long, value_name = "FILE", env = "SHOAL_MEMBER")]
    member: Option<PathBuf>,
}

/// Prints this node's id (the last word printed), after the membership when asked.
pub(crate) fn run_id(args: &IdArgs) -> Result<(), CliError> {
    let identity = load_identity(args.identity.as_deref())?;
    let id = identity.node_id();
    if let Some(path) = &args.member {
        let member = Membership::load(path)?;
        if member.node_id() != id {
            return Err(CliError::Usage(format!(
                "{} is the member certificate of node {}, not of this identity's node {id}",
                path.display(),
                member.node_id()
            )));
        }
        outln!(
            "member of swarm {:?} until {}",
            member.swarm_name(),
            format_time(member.not_after())
        );
    }
    outln!("node id {id}");
    Ok(())
}

/// `shoal swarm ...`
#[derive(clap::Subcommand, Debug)]
pub(crate) enum SwarmCommand {
    /// Create a swarm authority (a CA key and certificate). Keep the file secret: whoever
    /// has it can admit members.
    #[command(after_help = "Example:\n  shoal swarm new --out ~/secret/team.swarm --name team")]
    New {
        /// Where to write the authority (refused if it exists).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The swarm's name, shown in errors and by `shoal id --member`.
        #[arg(long, default_value = "shoal swarm")]
        name: String,
    },
    /// Issue a member certificate for a node, by its id (`shoal id` on that node).
    #[command(
        after_help = "Example:\n  shoal swarm admit --swarm ~/secret/team.swarm \
--id ABCD-...-WXYZ --out node7.member"
    )]
    Admit {
        /// The swarm authority (`shoal swarm new`).
        #[arg(long, value_name = "FILE")]
        swarm: PathBuf,
        /// The node's id, as `shoal id` prints it.
        #[arg(long, value_name = "NODE_ID")]
        id: NodeId,
        /// Where to write the member certificate (give it to the node: `--member FILE`).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// How long the certificate is valid.
        #[arg(long, value_name = "DAYS", default_value_t = 365,
              value_parser = clap::value_parser!(u32).range(1..=36_500))]
        days: u32,
    },
}

/// Runs `shoal swarm new` or `shoal swarm admit`.
pub(crate) fn run_swarm(command: &SwarmCommand) -> Result<(), CliError> {
    match command {
        SwarmCommand::New { out, name } => {
            let authority = SwarmAuthority::create(out, name)?;
            outln!(
                "swarm {:?}: authority written to {} (keep it secret)",
                authority.name(),
                out.display()
            );
            outln!(
                "admit a node with: shoal swarm admit --swarm {} --id NODE_ID --out NODE.member",
                out.display()
            );
        }
        SwarmCommand::Admit {
            swarm,
            id,
            out,
            days,
        } => {
            let authority = SwarmAuthority::load(swarm)?;
            let valid_for = Duration::from_secs(u64::from(*days) * 86_400);
            let member = authority.admit(id, valid_for)?;
            member.save(out)?;
            outln!(
                "admitted {id} to swarm {:?} until {}: give {} to that node (--member)",
                authority.name(),
                format_time(member.not_after()),
                out.display()
            );
        }
    }
    Ok(())
}
