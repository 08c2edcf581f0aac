//! The admin API's JSON bodies (docs/PROTOCOL.md §10 and §13), declared once: the server
//! writes them and `ixnctl` reads them. Fields are in alphabetical order, the order the
//! API has always written its keys in.

use serde::{Deserialize, Serialize};

/// `GET /v1/clients`: one page of registered clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientPage {
    /// The clients of this page.
    pub clients: Vec<Client>,
    /// The `after` of the next page, if there is one.
    pub next: Option<String>,
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    /// Its ClientName.
    pub client_name: String,
    /// Its ClientType's name.
    pub client_type: String,
    /// Its id (`DELETE /v1/clients/ID`); in a fleet, with `@INSTANCE`.
    pub id: String,
    /// A Proxy's logical clients.
    pub logical_clients: usize,
    /// The peer's address and port (behind a PROXY listener, the header's).
    pub peer: String,
    /// The ProxyClientId its EventAck carried.
    pub proxy_client_id: i32,
    /// When it registered (RFC 3339).
    pub registered_at: String,
    /// Its TLS session, on a TLS listener.
    pub tls: Option<Tls>,
    /// The worker that holds it.
    pub worker: u32,
}

/// A client's TLS session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    /// The client certificate's identities (DNS and URI SANs, or its CN).
    pub identities: Vec<String>,
    /// The protocol version.
    pub version: String,
}

/// `GET /v1/bans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanList {
    /// The bans in force, earliest end first.
    pub bans: Vec<Ban>,
}

/// A ban in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The banned address.
    pub address: String,
    /// The failed registrations that made it.
    pub failures: u32,
    /// When it ends (RFC 3339).
    pub until: String,
}

/// `GET /v1/names/NAME`: the name's holder in the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameHolder {
    /// The holder's client id.
    pub id: String,
    /// The server that holds it.
    pub instance: String,
    /// The name.
    pub name: String,
}

/// `GET /v1/instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceList {
    /// The fleet's live servers.
    pub instances: Vec<Instance>,
}

/// A live server of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Its admin API's address, if it has one.
    pub admin: Option<String>,
    /// Its registered clients, as of its last lease renewal.
    pub clients: u64,
    /// Its instance name.
    pub instance: String,
    /// When it started (RFC 3339).
    pub started_at: String,
}

/// Every error's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}

/// `POST /v1/upgrade`: a live upgrade done (docs/OPERATIONS.md 7e).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgrade {
    /// From the start to the new process's commit, in milliseconds.
    pub duration_ms: u64,
    /// Connections handed to the new process.
    pub handed: usize,
    /// Connections kept (TLS, closing), drained here as a lame duck.
    pub kept: usize,
    /// The new process.
    pub pid: u32,
}
