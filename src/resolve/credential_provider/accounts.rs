//! The pod's service account, for plugins with `tokenAttributes`: its UID and annotations
//! (`get serviceaccounts`) and a token for the plugin's audience (`create
//! serviceaccounts/token`, a TokenRequest), both cached briefly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;

/// Lifetime asked for each token: the API server's minimum, so a token outlives its use by little.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 600;

/// How long a token is handed to plugins (half its lifetime: a plugin always gets one with at
/// least five minutes left).
const TOKEN_REUSE: Duration = Duration::from_secs(300);

/// What a plugin may learn of a service account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

/// A service account as read (`None`: it does not exist), or why it could not be read.
type AccountAnswer = Arc<Result<Option<AccountInfo>, String>>;

/// Reads service accounts and requests their tokens through the Kubernetes API.
#[derive(Clone)]
pub struct ServiceAccounts {
    client: kube::Client,
    accounts: moka::future::Cache<(String, String), AccountAnswer>,
    tokens: moka::future::Cache<(String, String, String), Arc<String>>,
}

impl std::fmt::Debug for ServiceAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccounts").finish_non_exhaustive()
    }
}

/// Words for an API error, with the permission pinhook lacks on 403.
fn api_error(e: &kube::Error, what: &str, permission: &str) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "pinhook may not {what} (HTTP 403: {}); grant pinhook's service account {permission} (chart value credentialProviders.serviceAccountTokens.enabled=true)",
            crate::text::clip(&crate::text::escape(&status.message), 300)
        ),
        e => format!(
            "cannot {what}: {}",
            crate::text::clip(&crate::text::escape(&e.to_string()), 300)
        ),
    }
}

impl ServiceAccounts {
    /// Uses `client`; service accounts are reused for `account_ttl`.
    pub fn new(client: kube::Client, account_ttl: Duration) -> Self {
        Self {
            client,
            accounts: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(account_ttl)
                .build(),
            tokens: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(TOKEN_REUSE)
                .build(),
        }
    }

    /// The service account `namespace/name`, `None` when it does not exist.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<AccountInfo>, String> {
        let key = (namespace.to_owned(), name.to_owned());
        let client = self.client.clone();
        let answer = self
            .accounts
            .get_with(key.clone(), async move {
                let api: Api<ServiceAccount> = Api::namespaced(client, namespace);
                Arc::new(match api.get_opt(name).await {
                    Ok(Some(sa)) => Ok(Some(AccountInfo {
                        uid: sa.metadata.uid.unwrap_or_default(),
                        annotations: sa.metadata.annotations.unwrap_or_default(),
                    })),
                    Ok(None) => Ok(None),
                    Err(e) => Err(api_error(
                        &e,
                        &format!("read service account {namespace}/{name}"),
                        "get on serviceaccounts",
                    )),
                })
            })
            .await;
        if answer.is_err() {
            // A refusal is not remembered: the RBAC may be granted any moment.
            self.accounts.invalidate(&key).await;
        }
        (*answer).clone()
    }

    /// A token of `namespace/name` for `audience`, from a TokenRequest.
    pub async fn token(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
    ) -> Result<String, String> {
        let key = (namespace.to_owned(), name.to_owned(), audience.to_owned());
        let client = self.client.clone();
        self.tokens
            .try_get_with(key, async move {
                let api: Api<ServiceAccount> = Api::namespaced(client, namespace);
                let request = TokenRequest {
                    spec: Some(TokenRequestSpec {
                        audiences: Some(vec![audience.to_owned()]),
                        expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                match api
                    .create_token_request(name, &PostParams::default(), &request)
                    .await
                {
                    Ok(answer) => match answer.status {
                        Some(s) if s.token.as_deref().is_some_and(|t| !t.is_empty()) => {
                            Ok(Arc::new(s.token.unwrap_or_default()))
                        }
                        _ => Err(format!(
                            "the API server returned no token for service account {namespace}/{name}"
                        )),
                    },
                    Err(e) => Err(api_error(
                        &e,
                        &format!("create a token for service account {namespace}/{name}"),
                        "create on serviceaccounts/token",
                    )),
                }
            })
            .await
            .map(|t| (*t).clone())
            .map_err(|e: Arc<String>| (*e).clone())
    }
}
