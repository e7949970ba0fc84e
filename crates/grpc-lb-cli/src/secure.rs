//! How every subcommand reaches a secured registry: etcd over TLS and with a user,
//! ZooKeeper with a digest identity and, for `register`, creator-only ACLs.

use std::path::PathBuf;

use lb_core::ResolverRegistry;
use lb_resolvers::etcd::{EtcdOptions, EtcdResolverBuilder, EtcdTls};
use lb_resolvers::zookeeper::{ZkAcl, ZkOptions, ZkResolverBuilder};

use crate::Failure;

/// The environment variable `--etcd-user USER` (without `:PASSWORD`) reads the
/// password from.
pub(crate) const ETCD_PASSWORD_ENV: &str = "GRPC_LB_ETCD_PASSWORD";
/// The environment variable `--zk-digest USER` (without `:PASSWORD`) reads the
/// password from.
pub(crate) const ZK_PASSWORD_ENV: &str = "GRPC_LB_ZK_PASSWORD";

/// Registry access: TLS and a user for etcd, a digest identity for ZooKeeper.
#[derive(clap::Args, Clone, Default)]
pub(crate) struct RegistryArgs {
    /// etcd: verify etcd's server certificate with this CA (PEM; etcdctl's
    /// `--cacert`). Targets with a host then use https.
    #[arg(long, value_name = "FILE")]
    etcd_cacert: Option<PathBuf>,
    /// etcd: present this client certificate (PEM; etcdctl's `--cert`), with
    /// --etcd-key.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_cacert", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// etcd: the client certificate's private key (PEM; etcdctl's `--key`).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// etcd: verify the server certificate against this name instead of the
    /// endpoint's host.
    #[arg(long, value_name = "NAME", requires = "etcd_cacert")]
    etcd_server_name: Option<String>,
    /// etcd: authenticate as this user (etcdctl's `--user`); the password follows a
    /// colon or comes from $GRPC_LB_ETCD_PASSWORD.
    #[arg(long, value_name = "USER[:PASSWORD]")]
    etcd_user: Option<String>,
    /// ZooKeeper: authenticate every session with the digest scheme (`addauth digest
    /// USER:PASSWORD`); the password follows a colon or comes from
    /// $GRPC_LB_ZK_PASSWORD.
    #[arg(long, value_name = "USER[:PASSWORD]")]
    zk_digest: Option<String>,
}

/// Shows the flags without their passwords.
impl std::fmt::Debug for RegistryArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = |v: &Option<String>| {
            v.as_deref()
                .map(|v| v.split_once(':').map_or(v, |(user, _)| user).to_owned())
        };
        f.debug_struct("RegistryArgs")
            .field("etcd_cacert", &self.etcd_cacert)
            .field("etcd_cert", &self.etcd_cert)
            .field("etcd_key", &self.etcd_key)
            .field("etcd_server_name", &self.etcd_server_name)
            .field("etcd_user", &user(&self.etcd_user))
            .field("zk_digest", &user(&self.zk_digest))
            .finish()
    }
}

/// `USER:PASSWORD`, or `USER` with the password in `env`.
fn user_password(flag: &str, value: &str, env: &str) -> Result<(String, String), Failure> {
    let (user, password) = match value.split_once(':') {
        Some((user, password)) => (user.to_owned(), password.to_owned()),
        None => match std::env::var(env) {
            Ok(password) => (value.to_owned(), password),
            Err(_) => {
                return Err(Failure(format!(
                    "--{flag} `{value}` has no password: write USER:PASSWORD or set {env}"
                )));
            }
        },
    };
    if user.is_empty() {
        return Err(Failure(format!("--{flag}: the user is empty")));
    }
    Ok((user, password))
}

impl RegistryArgs {
    /// Whether --zk-digest was given.
    pub(crate) fn has_zk_digest(&self) -> bool {
        self.zk_digest.is_some()
    }

    /// The endpoints of a target's authority (`host:port,host:port`): https with
    /// --etcd-cacert, else http.
    pub(crate) fn etcd_endpoints(&self, authority: &str) -> Vec<String> {
        let scheme = if self.etcd_cacert.is_some() {
            "https"
        } else {
            "http"
        };
        authority
            .split(',')
            .map(|hp| format!("{scheme}://{hp}"))
            .collect()
    }

    /// `base` with these flags' etcd settings, checked (TLS files read, endpoints
    /// matching TLS).
    pub(crate) fn etcd_options(&self, base: EtcdOptions) -> Result<EtcdOptions, Failure> {
        let mut options = base;
        if let Some(ca) = &self.etcd_cacert {
            let mut tls = EtcdTls::new(ca);
            if let (Some(cert), Some(key)) = (&self.etcd_cert, &self.etcd_key) {
                tls = tls.with_client_identity(cert, key);
            }
            if let Some(name) = &self.etcd_server_name {
                tls = tls.with_domain(name);
            }
            options = options.with_tls(tls);
        }
        if let Some(value) = &self.etcd_user {
            let (user, password) = user_password("etcd-user", value, ETCD_PASSWORD_ENV)?;
            options = options.with_credentials(user, password);
        }
        options
            .validate()
            .map_err(|e| Failure(format!("etcd settings: {e}")))?;
        Ok(options)
    }

    /// `base` with these flags' ZooKeeper settings and `acl` for what a registrar
    /// creates, checked.
    pub(crate) fn zk_options(&self, base: ZkOptions, acl: ZkAcl) -> Result<ZkOptions, Failure> {
        let mut options = base.with_acl(acl);
        if let Some(value) = &self.zk_digest {
            let (user, password) = user_password("zk-digest", value, ZK_PASSWORD_ENV)?;
            options = options.with_digest(user, password);
        }
        options
            .validate()
            .map_err(|e| Failure(format!("ZooKeeper settings: {e}")))?;
        Ok(options)
    }

    /// A flag given that a target of `scheme` would not use, to be refused rather
    /// than ignored.
    fn unused_with(&self, scheme: &str) -> Option<&'static str> {
        let etcd = [
            ("--etcd-cacert", self.etcd_cacert.is_some()),
            ("--etcd-cert", self.etcd_cert.is_some()),
            ("--etcd-key", self.etcd_key.is_some()),
            ("--etcd-server-name", self.etcd_server_name.is_some()),
            ("--etcd-user", self.etcd_user.is_some()),
        ];
        let zk = [("--zk-digest", self.zk_digest.is_some())];
        let given =
            |flags: &[(&'static str, bool)]| flags.iter().find(|(_, on)| *on).map(|(f, _)| *f);
        match scheme.to_ascii_lowercase().as_str() {
            "etcd" => given(&zk),
            "zk" | "zookeeper" => given(&etcd),
            _ => given(&etcd).or_else(|| given(&zk)),
        }
    }

    /// Refuses a flag that a target of `scheme` would not use.
    pub(crate) fn check_for(&self, scheme: &str) -> Result<(), Failure> {
        match self.unused_with(scheme) {
            Some(flag) if scheme.is_empty() => Err(Failure(format!(
                "{flag} does not apply to a target without a scheme"
            ))),
            Some(flag) => Err(Failure(format!(
                "{flag} does not apply to a `{scheme}` target"
            ))),
            None => Ok(()),
        }
    }

    /// The resolvers for `target`, with etcd's and ZooKeeper's reaching their
    /// registry as these flags say; refuses flags the target would not use.
    pub(crate) fn resolvers(&self, target: &str) -> Result<ResolverRegistry, Failure> {
        let scheme = target.split_once("://").map_or("", |(scheme, _)| scheme);
        self.check_for(scheme)?;
        let mut registry = lb_resolvers::registry();
        // `xds:///name`: the bootstrap from GRPC_XDS_BOOTSTRAP(_CONFIG), as gRPC.
        registry.register(lb_tonic::xds::resolver());
        if self.etcd_cacert.is_some() || self.etcd_user.is_some() {
            // Targets without a host use etcd's default port on this machine.
            let base = EtcdOptions::default().with_endpoints(self.etcd_endpoints("127.0.0.1:2379"));
            let options = self.etcd_options(base)?;
            registry.register(EtcdResolverBuilder::new(options));
        }
        if self.zk_digest.is_some() {
            let options = self.zk_options(ZkOptions::default(), ZkAcl::Open)?;
            registry.register(ZkResolverBuilder::new(options));
        }
        Ok(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_passwords() {
        let args = RegistryArgs {
            etcd_user: Some("app:s3cret".to_owned()),
            zk_digest: Some("zk-app:0ther".to_owned()),
            ..RegistryArgs::default()
        };
        let shown = format!("{args:?}");
        assert!(shown.contains("app") && shown.contains("zk-app"), "{shown}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("0ther"),
            "{shown}"
        );
    }

    #[test]
    fn a_password_follows_a_colon_and_may_hold_colons() {
        let (user, password) = user_password("etcd-user", "app:s3:cret", "UNSET_FOR_TEST").unwrap();
        assert_eq!((user.as_str(), password.as_str()), ("app", "s3:cret"));
    }

    #[test]
    fn a_missing_password_or_user_is_a_failure_naming_the_flag() {
        let Failure(e) = user_password("zk-digest", "app", "GRPC_LB_UNSET_FOR_TEST").unwrap_err();
        assert!(
            e.contains("--zk-digest") && e.contains("GRPC_LB_UNSET_FOR_TEST"),
            "{e}"
        );
        let Failure(e) = user_password("etcd-user", ":pw", "GRPC_LB_UNSET_FOR_TEST").unwrap_err();
        assert!(e.contains("--etcd-user") && e.contains("empty"), "{e}");
    }
}
