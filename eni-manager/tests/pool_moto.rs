//! The manager's life cycle against AWS emulated by `moto_server` (started by the test on a
//! free loopback port; it must be on PATH: `pip install 'moto[server]'`). moto has no
//! hypervisor, so attached ENIs never appear as links: the manager runs with
//! `network.node_network: none`. No root needed: nothing leaves loopback.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{Filter, InstanceType};
use cloud_providers::aws::{AwsConfig, AwsProvider};
use cloud_providers::{ApiRateLimiter, CallSettings, Rate, RateLimitConfig};
use common::*;
use serde_json::json;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running moto_server, killed on drop.
struct Moto {
    url: String,
    child: Child,
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("moto_server could not be started ({e}); it must be on PATH: pip install 'moto[server]'")
            });
        let moto = Moto {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn sdk(endpoint: &str) -> AwsProvider {
    let limiter = ApiRateLimiter::new(RateLimitConfig::uniform(Rate {
        per_second: 100.0,
        burst: 50,
    }))
    .unwrap();
    AwsProvider::new(
        AwsConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some(endpoint.into()),
            static_credentials: Some(("testing".into(), "testing".into())),
            instance_id: None,
            request_timeout: Duration::from_secs(10),
        },
        None,
        CallSettings::new(limiter),
    )
    .await
    .unwrap()
}

/// A VPC, a subnet, a security group and one m5.large instance (3 ENIs x 10 addresses).
async fn aws_world(p: &AwsProvider) -> (String, String) {
    let ec2 = p.sdk_client();
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        // Large: moto draws secondary addresses at random with repeats (see
        // cloud-providers/tests/aws_moto.rs); a /18 keeps repeats rare.
        .cidr_block("10.0.64.0/18")
        .availability_zone("us-east-1a")
        .send()
        .await
        .unwrap();
    let subnet_id = subnet.subnet().unwrap().subnet_id().unwrap().to_string();
    let sg = ec2
        .create_security_group()
        .group_name("nodes")
        .description("nodes")
        .vpc_id(&vpc_id)
        .send()
        .await
        .unwrap();
    let run = ec2
        .run_instances()
        .image_id("ami-03cf127a")
        .instance_type(InstanceType::M5Large)
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet_id)
        .security_group_ids(sg.group_id().unwrap())
        .send()
        .await
        .unwrap();
    let instance_id = run.instances()[0].instance_id().unwrap().to_string();
    (instance_id, subnet_id)
}

/// (id, status, attached instance, secondary addresses) of the ENIs tagged for this node.
async fn tagged_enis(
    p: &AwsProvider,
    instance: &str,
) -> Vec<(String, String, Option<String>, BTreeSet<Ipv4Addr>)> {
    let out = p
        .sdk_client()
        .describe_network_interfaces()
        .filters(
            Filter::builder()
                .name("tag:eni-net.io/node")
                .values(instance)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("tag:eni-net.io/cluster")
                .values(CLUSTER)
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.network_interfaces()
        .iter()
        .map(|n| {
            (
                n.network_interface_id().unwrap_or_default().to_string(),
                n.status()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                n.attachment()
                    .and_then(|a| a.instance_id())
                    .map(str::to_string),
                n.private_ip_addresses()
                    .iter()
                    .filter(|a| a.primary() != Some(true))
                    .filter_map(|a| a.private_ip_address()?.parse().ok())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn life_cycle_against_moto() {
    let moto = Moto::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let p = rt.block_on(sdk(&moto.url));
    let (instance, subnet) = rt.block_on(aws_world(&p));

    let dir = TempDir::new("moto");
    let metrics_port = free_port();
    let cfg = json!({
        "cloud": {
            "provider": "aws", "region": "us-east-1", "endpoint": moto.url,
            "instance_id": instance, "rate_per_second": 50.0, "rate_burst": 50
        },
        "cluster": {"id": CLUSTER},
        "network": {"subnets": {"us-east-1a": [subnet]}, "node_network": "none"},
        "pool": {"min_idle": 2, "max_idle": 4, "release_cooldown_s": 1},
        "daemon": {
            "socket": dir.path().join("m.sock"), "state_dir": dir.path().join("state"),
            "metrics_address": format!("127.0.0.1:{metrics_port}")
        }
    });
    let mut m = ManagerProc::spawn(
        dir.path(),
        None,
        &cfg,
        &[
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    m.wait_ready(Duration::from_secs(60));
    let (code, _) = http(
        "GET",
        &format!("http://127.0.0.1:{metrics_port}/readyz"),
        None,
    );
    assert_eq!(code, 200);

    let s = m.status();
    assert_eq!(s.node.provider, "aws");
    assert_eq!(s.node.instance_id, instance);
    assert_eq!(
        (s.node.max_enis, s.node.ipv4_per_eni, s.node.max_pods),
        (3, 10, 18)
    );

    // Twelve pods: beyond one ENI's nine addresses, so a second ENI is created.
    let netns = "/proc/self/ns/net";
    let mut allocs = Vec::new();
    for i in 0..12 {
        let a = allocate(&m, &format!("moto-{i}"), netns, 30_000)
            .unwrap_or_else(|e| panic!("allocation {i}: {e}\n{}", m.log_tail(40)));
        assert_eq!(a.subnet.to_string(), "10.0.64.0/18");
        assert_eq!(a.gateway, "10.0.64.1".parse::<Ipv4Addr>().unwrap());
        allocs.push(a);
    }
    let ips: BTreeSet<Ipv4Addr> = allocs.iter().map(|a| a.ip).collect();
    assert_eq!(ips.len(), 12);
    // Idempotent per container.
    assert_eq!(
        allocate(&m, "moto-0", netns, 30_000).unwrap().ip,
        allocs[0].ip
    );

    // The pool refills behind the allocations: compare once no assign is between the two
    // views (the manager records an assign's addresses when the cloud's answer arrives).
    let settle = std::time::Instant::now();
    let (s, enis) = loop {
        let s = m.status();
        let enis = rt.block_on(tagged_enis(&p, &instance));
        let agree = enis.iter().all(|(id, _, _, addrs)| {
            s.pool.enis.iter().any(|e| {
                e.eni_id == *id
                    && e.ips.iter().map(|i| i.ip).collect::<BTreeSet<Ipv4Addr>>() == *addrs
            })
        }) && enis.len() == s.pool.enis.len();
        if agree || settle.elapsed() > Duration::from_secs(10) {
            break (s, enis);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(s.pool.allocated, 12);
    let ids: BTreeSet<&str> = enis.iter().map(|e| e.0.as_str()).collect();
    let mine: BTreeSet<&str> = s.pool.enis.iter().map(|e| e.eni_id.as_str()).collect();
    assert_eq!(ids, mine, "moto ENIs tagged for the node vs the manager's");
    assert_eq!(enis.len(), 2);
    for (id, status, att, addrs) in &enis {
        assert_eq!(status, "in-use", "{id}");
        assert_eq!(att.as_deref(), Some(instance.as_str()), "{id}");
        let known: BTreeSet<Ipv4Addr> = s
            .pool
            .enis
            .iter()
            .find(|e| e.eni_id == *id)
            .unwrap()
            .ips
            .iter()
            .map(|i| i.ip)
            .collect();
        assert_eq!(*addrs, known, "addresses of {id}");
    }
    for a in &allocs {
        assert!(
            enis.iter().any(|e| e.0 == a.eni_id && e.3.contains(&a.ip)),
            "{a:?}"
        );
    }

    // Release all but one: after the cool-down the pool shrinks back between its watermarks.
    let mut c = m.client();
    for a in &allocs[1..] {
        assert_eq!(
            c.release(release_req(&a.container_id))
                .unwrap()
                .map(|r| r.ip),
            Some(a.ip)
        );
    }
    assert!(c.release(release_req("moto-5")).unwrap().is_none());
    let ok = wait_for(Duration::from_secs(30), || {
        let s = m.status();
        s.pool.idle >= 2 && s.pool.idle <= 4
    });
    let s = m.status();
    assert!(ok, "pool did not shrink: {:?}\n{}", s.pool, m.log_tail(40));
    assert_eq!(s.pool.allocated, 1);
    assert!(
        wait_for(Duration::from_secs(20), || {
            let enis = rt.block_on(tagged_enis(&p, &instance));
            let s = m.status();
            enis.len() == s.pool.enis.len()
                && enis.iter().all(|e| {
                    s.pool.enis.iter().any(|k| {
                        k.eni_id == e.0
                            && k.ips.iter().map(|i| i.ip).collect::<BTreeSet<_>>() == e.3
                    })
                })
        }),
        "moto and the manager disagree after the cool-down: {:?} vs {:?}",
        rt.block_on(tagged_enis(&p, &instance)),
        m.status().pool.enis
    );
    let text = http(
        "GET",
        &format!("http://127.0.0.1:{metrics_port}/metrics"),
        None,
    )
    .1;
    assert_eq!(
        metric(&text, "eni_pool_allocated_addresses"),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            r#"eni_cloud_calls_total{api="CreateNetworkInterface",outcome="ok"}"#
        ) >= Some(2.0),
        "{text}"
    );
}
