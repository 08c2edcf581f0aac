//! A Proxy registering logical clients on its connection; the client registers them again
//! after every reconnection.
//!
//! `cargo run -p ixn-client --example proxy -- 127.0.0.1:7400` against the embedded
//! registry (`Proxy_main`, Credential `proxy-secret`).

use std::time::Duration;

use ixn_client::{Client, ClientConfig, ClientType, Event, Registration};

#[tokio::main]
async fn main() -> Result<(), ixn_client::Error> {
    let server = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7400".into());
    let reg = Registration::new("Proxy_main", ClientType::Proxy)
        .credential("proxy-secret")
        .keep_alive(Duration::from_secs(10));
    let client = Client::connect(ClientConfig::new([server], reg)).await?;
    let mut events = client.events();
    for (name, ty) in [
        ("MediaServer_email", ClientType::MediaServer),
        ("Router_local", ClientType::RoutingEngine),
    ] {
        let (logical, pid) = client.register_logical(Registration::new(name, ty)).await?;
        println!("{name}: {logical:?} is ProxyClientId {pid}");
    }
    // After a reconnection each logical client has a new ProxyClientId.
    while let Ok(e) = events.recv().await {
        match e {
            Event::LogicalRegistered {
                logical,
                proxy_client_id,
            } => {
                println!("{logical:?} registered again as {proxy_client_id}")
            }
            Event::Stopped(why) => {
                println!("stopped: {why:?}");
                break;
            }
            e => println!("{e:?}"),
        }
    }
    Ok(())
}
