//! The lab against real UDP sockets on loopback: added one-way latency, loss
//! at the configured rate, cuts in one direction only, and control commands.

// Test helpers fail the test by panicking; that is what unwrap is for here.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meridian_netlab::{Lab, LinkSpec, Region};
use tokio::net::UdpSocket;

fn free_udp() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

/// Two "nodes" bound at their real addresses, and the lab in front of them.
async fn setup() -> (Lab, UdpSocket, UdpSocket, SocketAddr, SocketAddr) {
    let (a_real, b_real) = (free_udp(), free_udp());
    let (a_front, b_front) = (free_udp(), free_udp());
    let a = UdpSocket::bind(a_real).await.unwrap();
    let b = UdpSocket::bind(b_real).await.unwrap();
    let lab = Lab::start(vec![
        Region {
            name: "a".into(),
            front: a_front,
            real: a_real,
        },
        Region {
            name: "b".into(),
            front: b_front,
            real: b_real,
        },
    ])
    .await
    .unwrap();
    (lab, a, b, a_front, b_front)
}

async fn recv(s: &UdpSocket, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    match tokio::time::timeout(within, s.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

#[tokio::test]
async fn latency_is_added_each_way_and_replies_come_from_the_front() {
    let (lab, a, b, _, b_front) = setup().await;
    lab.set_both(
        "a",
        "b",
        LinkSpec {
            latency_ms: 40,
            ..Default::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    a.send_to(b"ping", b_front).await.unwrap();
    let (got, via) = recv(&b, Duration::from_secs(2)).await.expect("delivered");
    assert_eq!(got, b"ping");
    let one_way = t.elapsed();
    b.send_to(b"pong", via).await.unwrap();
    let (got, from) = recv(&a, Duration::from_secs(2))
        .await
        .expect("reply delivered");
    let rtt = t.elapsed();
    assert_eq!(got, b"pong");
    assert_eq!(
        from, b_front,
        "a sees the reply from the address it dialled"
    );
    println!("one way {one_way:?}, round trip {rtt:?} (40 ms configured each way)");
    assert!(one_way >= Duration::from_millis(40), "{one_way:?}");
    assert!(rtt >= Duration::from_millis(80), "{rtt:?}");
    assert!(rtt < Duration::from_millis(300), "{rtt:?}");
}

#[tokio::test]
async fn loss_drops_about_the_configured_share_and_cuts_are_one_way() {
    let (lab, a, b, _, b_front) = setup().await;
    lab.set(
        "a",
        "b",
        LinkSpec {
            loss: 0.5,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..400u32 {
        a.send_to(&i.to_be_bytes(), b_front).await.unwrap();
    }
    let mut got = 0;
    while recv(&b, Duration::from_millis(300)).await.is_some() {
        got += 1;
    }
    println!("{got} of 400 datagrams passed a link with 50 % loss");
    assert!((120..=280).contains(&got), "{got} of 400 passed");

    // Cut a -> b only: b can still reach a.
    lab.command("set a b loss=0").unwrap();
    a.send_to(b"x", b_front).await.unwrap();
    let (_, via) = recv(&b, Duration::from_secs(1))
        .await
        .expect("clean link delivers");
    assert_eq!(lab.command("cut a b").unwrap(), "ok");
    a.send_to(b"lost", b_front).await.unwrap();
    assert!(
        recv(&b, Duration::from_millis(300)).await.is_none(),
        "the cut direction delivers nothing"
    );
    b.send_to(b"back", via).await.unwrap();
    assert!(
        recv(&a, Duration::from_secs(1)).await.is_some(),
        "the other direction still works"
    );
    lab.command("heal a b").unwrap();
    a.send_to(b"again", b_front).await.unwrap();
    assert!(recv(&b, Duration::from_secs(1)).await.is_some(), "healed");
    lab.command("isolate b").unwrap();
    b.send_to(b"none", via).await.unwrap();
    assert!(
        recv(&a, Duration::from_millis(300)).await.is_none(),
        "isolated"
    );
    let stats = lab.command("stats").unwrap();
    assert!(stats.contains("dropped_cut=2"), "{stats}");
    // Bad commands are errors, not panics.
    assert!(lab.command("set a nowhere latency=1").is_err());
    assert!(lab.command("set a b loss=2").is_err());
    assert!(lab.command("frobnicate").is_err());
}
