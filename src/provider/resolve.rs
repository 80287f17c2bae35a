//! Name resolution for the HTTP transport: the system's, or one that
//! refuses addresses inside the operator's network.
//!
//! A `callback_url`'s host is allowed by name, but a name can point
//! anywhere, and be changed to after it was checked (DNS rebinding). So the
//! addresses are checked where the connection is made, from the very
//! answer the connection uses: nothing can swap them in between.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};

/// A name that resolved only to addresses Herald will not connect to.
/// Never holds more than the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0} resolves only to private, loopback or link-local addresses, which callbacks may not reach"
)]
pub struct PrivateAddress(pub String);

/// The system resolver, optionally dropping every address that is not
/// public ([`is_internal`]).
#[derive(Clone)]
pub struct Resolver {
    system: GaiResolver,
    public_only: bool,
}

impl Resolver {
    pub fn system() -> Self {
        Self {
            system: GaiResolver::new(),
            public_only: false,
        }
    }

    pub fn public_only() -> Self {
        Self {
            system: GaiResolver::new(),
            public_only: true,
        }
    }
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.system.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_owned();
        let resolving = self.system.call(name);
        let public_only = self.public_only;
        Box::pin(async move {
            let found: Vec<SocketAddr> = resolving.await?.collect();
            if !public_only {
                return Ok(found.into_iter());
            }
            let public: Vec<SocketAddr> =
                found.into_iter().filter(|a| !is_internal(a.ip())).collect();
            if public.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    PrivateAddress(host),
                ));
            }
            Ok(public.into_iter())
        })
    }
}

/// Whether `error`, or anything it was caused by, is a [`PrivateAddress`].
pub fn is_private_address(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<PrivateAddress>()
            || e.downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<PrivateAddress>())
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// An address inside a network rather than on the internet: loopback,
/// private (RFC 1918, IPv6 unique local), link-local (cloud metadata
/// services live there), carrier-grade NAT, unspecified, broadcast and
/// multicast; an IPv4 address written as IPv6 counts as itself.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // 100.64.0.0/10, shared address space (RFC 6598).
                || (a == 100 && (64..128).contains(&b))
                // 0.0.0.0/8, "this network".
                || a == 0
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7, unique local.
                || (first & 0xfe00) == 0xfc00
                // fe80::/10, link-local.
                || (first & 0xffc0) == 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service as _;

    #[test]
    fn internal_addresses_are_told_from_public_ones() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "100.128.0.1", "2606:4700::1111"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn a_name_for_loopback_is_refused_when_only_public_addresses_may_be_reached() {
        let name: Name = "localhost".parse().unwrap();
        let err = Resolver::public_only()
            .call(name.clone())
            .await
            .unwrap_err();
        assert!(is_private_address(&err), "{err}");
        assert!(
            err.to_string()
                .contains("localhost resolves only to private")
        );
        let found: Vec<SocketAddr> = Resolver::system().call(name).await.unwrap().collect();
        assert!(found.iter().any(|a| a.ip().is_loopback()), "{found:?}");
    }
}
