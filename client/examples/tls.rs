//! A client over TLS presenting a client certificate (mutual TLS, docs/PROTOCOL.md §9).
//!
//! `cargo run -p ixn-client --example tls -- SERVER:PORT CA.pem CLIENT.pem CLIENT.key NAME`
//! registers NAME as a MediaServer, checking the server's certificate against CA.pem and
//! for the server's host name (or `IXN_TLS_SERVER_NAME`).

use ixn_client::{Client, ClientConfig, ClientType, Registration, Tls};

#[tokio::main]
async fn main() -> Result<(), ixn_client::Error> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [server, ca, cert, key, name] = <[String; 5]>::try_from(a).map_err(|_| {
        ixn_client::Error::Config("usage: tls SERVER:PORT CA.pem CLIENT.pem CLIENT.key NAME".into())
    })?;
    let mut tls = Tls::with_client_cert(ca, cert, key)?;
    if let Ok(n) = std::env::var("IXN_TLS_SERVER_NAME") {
        tls = tls.server_name(n);
    }
    let config =
        ClientConfig::new([server], Registration::new(name, ClientType::MediaServer)).tls(tls);
    match Client::connect(config).await {
        Ok(client) => {
            println!("registered: {:?}", client.status());
            client.close().await;
            Ok(())
        }
        Err(e) => {
            // A refusal says which code: AuthenticationFailed when the certificate does not
            // carry an identity the registry entry names.
            eprintln!("refused: {e} (code {:?})", e.code());
            Err(e)
        }
    }
}
