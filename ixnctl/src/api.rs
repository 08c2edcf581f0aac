//! Talking to a server: its admin API (docs/PROTOCOL.md §10, §13) with the bearer token,
//! and its metrics endpoint. Every failure becomes an [`Failure`] that says what to do and
//! carries the exit status it deserves.

use std::time::Duration;

use serde::de::DeserializeOwned;

/// Exit statuses (the README's "ixnctl" section).
pub mod exit {
    /// The server said no: not found, not ready, unavailable.
    pub const REFUSED: u8 = 1;
    /// Invalid input: a bad argument, a configuration or registry that does not check.
    pub const INVALID: u8 = 2;
    /// The server could not be asked: unreachable, or the token was refused.
    pub const UNREACHABLE: u8 = 3;
}

/// A failure with what to do about it, and its exit status.
#[derive(Debug)]
pub struct Failure {
    /// The message for people.
    pub message: String,
    /// The exit status.
    pub status: u8,
}

impl Failure {
    pub fn new(status: u8, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            status,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A server's admin API.
pub struct Admin {
    base: String,
    token: Option<(String, String)>,
    agent: ureq::Agent,
}

/// A GET or DELETE answered: its status and body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .build()
}

impl Admin {
    /// The admin API at `base` (`http://host:port`), with the token in `token_file`.
    pub fn new(base: &str, token_file: Option<&std::path::Path>) -> Result<Self, Failure> {
        let token = match token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Failure::new(
                        exit::INVALID,
                        format!("cannot read the token file {}: {e}", path.display()),
                    )
                })?;
                let token = text.strip_suffix('\n').unwrap_or(&text);
                let token = token.strip_suffix('\r').unwrap_or(token).to_string();
                Some((token, path.display().to_string()))
            }
        };
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: agent(),
        })
    }

    /// `method path`: the answer, or a failure that says what to do. 401 and 403 are
    /// failures; other statuses are the caller's to judge.
    pub fn call(&self, method: &str, path: &str) -> Result<Answer, Failure> {
        self.call_within(method, path, None)
    }

    /// Like [`Admin::call`], waiting up to `timeout` for the answer (a live upgrade is
    /// answered once it is over).
    pub fn call_within(
        &self,
        method: &str,
        path: &str,
        timeout: Option<Duration>,
    ) -> Result<Answer, Failure> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.request(method, &url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some((token, _)) = &self.token {
            req = req.set("Authorization", &format!("Bearer {token}"));
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                return Err(Failure::new(
                    exit::UNREACHABLE,
                    format!(
                        "cannot reach the admin API at {}: {t}. Is the server running with \
                         `--admin-listen` set to this address? (--server or IXN_ADMIN_URL)",
                        self.base
                    ),
                ))
            }
        };
        let status = resp.status();
        let body = resp.into_string().unwrap_or_default();
        match status {
            401 => Err(Failure::new(
                exit::UNREACHABLE,
                match &self.token {
                    Some((_, file)) => format!(
                        "the server refused the token in {file} (401): it must hold the token of \
                         the server's `--admin-token-file`"
                    ),
                    None => "the server wants a token (401): give the file holding it with \
                             --token-file or IXN_ADMIN_TOKEN_FILE"
                        .to_string(),
                },
            )),
            403 => Err(Failure::new(
                exit::UNREACHABLE,
                format!("the server forbids this (403): {}", api_error(&body)),
            )),
            _ => Ok(Answer { status, body }),
        }
    }

    /// A GET whose 200 body is `T`; any other status is a failure naming the server's error.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        let a = self.call("GET", path)?;
        if a.status != 200 {
            return Err(refused(a.status, &a.body));
        }
        serde_json::from_str(&a.body).map_err(|e| {
            Failure::new(
                exit::REFUSED,
                format!("the server's answer to {path} is not what this ixnctl reads: {e}"),
            )
        })
    }
}

/// A status other than the one hoped for, as a failure.
pub fn refused(status: u16, body: &str) -> Failure {
    Failure::new(exit::REFUSED, format!("{} ({status})", api_error(body)))
}

/// The `error` of an admin API error body, or the body itself.
fn api_error(body: &str) -> String {
    serde_json::from_str::<ixn::admin_api::ApiError>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| body.trim().to_string())
}

/// A GET of the metrics endpoint: (status, body).
pub fn metrics_get(base: &str, path: &str) -> Result<(u16, String), Failure> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    match agent().get(&url).call() {
        Ok(r) => Ok((r.status(), r.into_string().unwrap_or_default())),
        Err(ureq::Error::Status(s, r)) => Ok((s, r.into_string().unwrap_or_default())),
        Err(ureq::Error::Transport(t)) => Err(Failure::new(
            exit::UNREACHABLE,
            format!(
                "cannot reach the metrics endpoint at {base}: {t}. Is the server running, \
                 with `--metrics-listen` at this address? (--metrics or IXN_METRICS_URL)"
            ),
        )),
    }
}
