//! Pull secrets read through the Kubernetes API: the pod's `imagePullSecrets`, then its service
//! account's. Only `get` by name (never `list` or `watch`), cached briefly.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;

use super::auth::Keyring;

/// No Kubernetes API to read pull secrets from.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Neither an in-cluster config nor a usable `KUBECONFIG`.
    #[error("{0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The configuration found cannot make a client.
    #[error("{0}")]
    Client(#[from] kube::Error),
}

/// Reads pull secrets with a Kubernetes client.
#[derive(Clone)]
pub struct PullSecrets {
    client: kube::Client,
    secrets: moka::future::Cache<(String, String), Arc<Option<Keyring>>>,
    accounts: moka::future::Cache<(String, String), Arc<Vec<String>>>,
}

impl std::fmt::Debug for PullSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullSecrets").finish_non_exhaustive()
    }
}

impl PullSecrets {
    /// Connects using the in-cluster config or `KUBECONFIG`; an error (with the reason) when
    /// neither exists or the client cannot be built.
    pub async fn connect(cache_ttl: Duration) -> Result<Self, ConnectError> {
        let config = kube::Config::infer().await?;
        let client = kube::Client::try_from(config)?;
        Ok(Self::with_client(client, cache_ttl))
    }

    /// Uses `client`.
    pub fn with_client(client: kube::Client, cache_ttl: Duration) -> Self {
        Self {
            client,
            secrets: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(cache_ttl)
                .build(),
            accounts: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(cache_ttl)
                .build(),
        }
    }

    /// The Kubernetes client, shared with other readers of the API.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The keyring for a pod in `namespace`: its own pull secrets first, then its service account's.
    pub async fn keyring(
        &self,
        namespace: &str,
        pod_secrets: &[String],
        service_account: &str,
    ) -> Keyring {
        let mut keyring = Keyring::default();
        for name in pod_secrets {
            if let Some(k) = self.secret(namespace, name).await.as_ref() {
                keyring.extend(k.clone());
            }
        }
        for name in self
            .account_secrets(namespace, service_account)
            .await
            .iter()
        {
            if pod_secrets.contains(name) {
                continue;
            }
            if let Some(k) = self.secret(namespace, name).await.as_ref() {
                keyring.extend(k.clone());
            }
        }
        keyring
    }

    async fn secret(&self, namespace: &str, name: &str) -> Arc<Option<Keyring>> {
        let key = (namespace.to_owned(), name.to_owned());
        let client = self.client.clone();
        self.secrets
            .get_with(key, async move {
                let api: Api<Secret> = Api::namespaced(client, namespace);
                let source = format!("pull secret {namespace}/{name}");
                match api.get_opt(name).await {
                    Ok(Some(secret)) => Arc::new(parse_secret(&secret, &source)),
                    Ok(None) => {
                        tracing::warn!(secret = %format!("{namespace}/{name}"), "image pull secret not found; skipping it");
                        Arc::new(None)
                    }
                    Err(e) => {
                        tracing::warn!(secret = %format!("{namespace}/{name}"), error = %e, "cannot read image pull secret; skipping it");
                        Arc::new(None)
                    }
                }
            })
            .await
    }

    async fn account_secrets(&self, namespace: &str, account: &str) -> Arc<Vec<String>> {
        let key = (namespace.to_owned(), account.to_owned());
        let client = self.client.clone();
        self.accounts
            .get_with(key, async move {
                let api: Api<ServiceAccount> = Api::namespaced(client, namespace);
                match api.get_opt(account).await {
                    Ok(Some(sa)) => Arc::new(sa.image_pull_secrets.unwrap_or_default().into_iter().map(|r| r.name).collect()),
                    Ok(None) => Arc::new(Vec::new()),
                    Err(e) => {
                        tracing::warn!(service_account = %format!("{namespace}/{account}"), error = %e, "cannot read service account; skipping its pull secrets");
                        Arc::new(Vec::new())
                    }
                }
            })
            .await
    }
}

/// A keyring from a `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg` secret.
pub fn parse_secret(secret: &Secret, source: &str) -> Option<Keyring> {
    let data = secret.data.as_ref()?;
    let string_data = |key: &str| data.get(key).map(|b| b.0.clone());
    let result = match secret.type_.as_deref() {
        Some("kubernetes.io/dockerconfigjson") => {
            string_data(".dockerconfigjson").map(|b| Keyring::from_docker_config_json(&b, source))
        }
        Some("kubernetes.io/dockercfg") => {
            string_data(".dockercfg").map(|b| Keyring::from_dockercfg(&b, source))
        }
        other => {
            tracing::warn!(source, r#type = ?other, "image pull secret is not of type kubernetes.io/dockerconfigjson or dockercfg; skipping it");
            None
        }
    }?;
    match result {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(error = %e, "unusable image pull secret; skipping it");
            None
        }
    }
}
