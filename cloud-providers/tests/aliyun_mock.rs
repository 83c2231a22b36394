//! The Alibaba Cloud provider against `mock-cloud`, started by each test.
//!
//! Needs the mock built first: `cargo build -p mock-cloud` (same `CARGO_TARGET_DIR`), or
//! `MOCK_CLOUD_BIN=/path/to/mock-cloud`.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloud_providers::aliyun::{
    AliyunConfig, AliyunCredentials, AliyunProvider, CredentialProvider, SignatureVersion,
};
use cloud_providers::metadata::{MetadataClient, MetadataFlavor};
use cloud_providers::{
    AddressCount, ApiRateLimiter, AssignAddressesOptions, AttachEniOptions, CallSettings,
    CallStats, CloudProvider, CreateEniOptions, DeleteEniOptions, DetachEniOptions, EniStatus,
    IdempotencyToken, ListEnisOptions, Priority, ProviderError, Rate, RateLimitConfig, RetryPolicy,
    SubnetCapacityOptions, UnassignAddressesOptions, WaitCondition, WaitEniOptions,
};
use common::MockCloud;
use serde_json::json;

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        max_elapsed: Duration::from_secs(30),
        max_attempts: 40,
    }
}

fn settings(rate: Rate) -> (CallSettings, Arc<CallStats>) {
    let stats = Arc::new(CallStats::new());
    let limiter = ApiRateLimiter::new(RateLimitConfig::uniform(rate)).unwrap();
    let mut s = CallSettings::new(limiter);
    s.retry = fast_retry();
    s.observer = stats.clone();
    (s, stats)
}

fn provider_with(
    mock: &MockCloud,
    signature: SignatureVersion,
    creds: CredentialProvider,
    settings: CallSettings,
) -> AliyunProvider {
    let mut cfg = AliyunConfig::new("cn-hangzhou").with_endpoint(&mock.url);
    cfg.signature = signature;
    cfg.prefix_support = true;
    let md = Arc::new(MetadataClient::new(MetadataFlavor::Aliyun, &mock.url).unwrap());
    AliyunProvider::new(cfg, Arc::new(creds), Some(md), settings).unwrap()
}

fn provider(mock: &MockCloud, signature: SignatureVersion) -> (AliyunProvider, Arc<CallStats>) {
    let (s, stats) = settings(Rate {
        per_second: 100.0,
        burst: 50,
    });
    let creds = CredentialProvider::fixed(AliyunCredentials::new("testid", "testsecret"));
    (provider_with(mock, signature, creds, s), stats)
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn create_opts(vswitch: &str, addresses: AddressCount, t: &[(&str, &str)]) -> CreateEniOptions {
    CreateEniOptions {
        subnet_id: vswitch.into(),
        security_group_ids: vec!["sg-nodes".into()],
        addresses,
        tags: tags(t),
        description: Some("test".into()),
        idempotency_token: IdempotencyToken::random(),
        priority: Priority::Refill,
    }
}

async fn life_cycle(signature: SignatureVersion) {
    let mock = MockCloud::start();
    let (p, stats) = provider(&mock, signature);

    let node = p.node_info().await.unwrap();
    assert_eq!(node.instance_id, "i-node-a");
    assert_eq!(node.instance_type, "ecs.g7.large");
    assert_eq!(node.zone, "cn-hangzhou-h");
    assert_eq!(node.vpc_id, "vpc-mock");
    assert_eq!(node.primary_subnet_id, "vsw-h1");
    assert_eq!(node.primary_eni_id, "eni-node-a-primary");
    assert_eq!(node.primary_ip.to_string(), "192.168.1.10");
    assert_eq!(node.security_group_ids, vec!["sg-nodes".to_string()]);
    assert_eq!((node.limits.max_enis, node.limits.ipv4_per_eni), (3, 10));

    let owner = [("cluster", "c1"), ("node", "i-node-a")];
    let eni = p
        .create_eni(&create_opts("vsw-h1", AddressCount::Ips(3), &owner))
        .await
        .unwrap();
    assert_eq!(eni.status, EniStatus::Available);
    assert_eq!(eni.secondary_ips.len(), 3);
    assert!(eni.primary_ip.is_some());
    assert_eq!(eni.tags, tags(&owner));

    // Listed by tags; another cluster's tags find nothing.
    let mine = p
        .list_enis(&ListEnisOptions {
            tags: tags(&owner),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, eni.id);
    let theirs = p
        .list_enis(&ListEnisOptions {
            tags: tags(&[("cluster", "other")]),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(theirs.is_empty());

    p.attach_eni(&AttachEniOptions {
        eni_id: eni.id.clone(),
        instance_id: node.instance_id.clone(),
        device_index: None,
        idempotency_token: IdempotencyToken::random(),
        priority: Priority::PodWaiting,
    })
    .await
    .unwrap();
    let mut wait = WaitEniOptions::new(&eni.id, WaitCondition::Attached);
    wait.poll_interval = Duration::from_millis(100);
    wait.timeout = Duration::from_secs(10);
    let attached = p.wait_for_eni(&wait).await.unwrap().unwrap();
    assert_eq!(attached.status, EniStatus::InUse);
    assert_eq!(attached.instance_id.as_deref(), Some("i-node-a"));
    assert!(attached.device_index.unwrap_or(0) >= 1);

    // 15 more: split into 10 + 5 ... but the ENI holds 10 addresses at most (1 + 3 + 6).
    let got = p
        .assign_addresses(&AssignAddressesOptions {
            eni_id: eni.id.clone(),
            addresses: AddressCount::Ips(4),
            idempotency_token: IdempotencyToken::random(),
            priority: Priority::PodWaiting,
        })
        .await
        .unwrap();
    assert_eq!(got.ips.len(), 4);
    let over = p
        .assign_addresses(&AssignAddressesOptions {
            eni_id: eni.id.clone(),
            addresses: AddressCount::Ips(5),
            idempotency_token: IdempotencyToken::random(),
            priority: Priority::Refill,
        })
        .await
        .unwrap_err();
    assert!(matches!(over, ProviderError::IpLimit { .. }), "{over:?}");

    // Metadata shows the new ENI and its addresses after the lag.
    let md = MetadataClient::new(MetadataFlavor::Aliyun, &mock.url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let macs = md.macs().await.unwrap();
        if macs.contains(&attached.mac) {
            let iface = md.interface(&attached.mac).await.unwrap();
            if iface.ips.len() == 8 {
                assert_eq!(iface.eni_id, eni.id);
                assert_eq!(iface.subnet_id, "vsw-h1");
                assert_eq!(iface.gateway.to_string(), "192.168.1.253");
                for ip in &got.ips {
                    assert!(iface.ips.contains(ip));
                }
                break;
            }
        }
        assert!(Instant::now() < deadline, "metadata never showed the ENI");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Unassign two, then one of them again (already gone: success).
    p.unassign_addresses(&UnassignAddressesOptions {
        eni_id: eni.id.clone(),
        ips: got.ips[..2].to_vec(),
        prefixes: vec![],
        priority: Priority::Release,
    })
    .await
    .unwrap();
    // A batch mixing a gone address with a held one still removes the held one.
    p.unassign_addresses(&UnassignAddressesOptions {
        eni_id: eni.id.clone(),
        ips: vec![got.ips[0], got.ips[2]],
        prefixes: vec![],
        priority: Priority::Release,
    })
    .await
    .unwrap();
    let now = p.describe_eni(&eni.id, Priority::Refill).await.unwrap();
    assert_eq!(now.secondary_ips.len(), 4);
    assert!(!now.secondary_ips.contains(&got.ips[2]));
    assert!(now.secondary_ips.contains(&got.ips[3]));

    let cap = p
        .subnet_capacity(&SubnetCapacityOptions {
            subnet_ids: vec!["vsw-h1".into()],
            priority: Priority::Release,
        })
        .await
        .unwrap();
    assert_eq!(cap[0].subnet_id, "vsw-h1");
    // 252 usable, minus the node's primary and this ENI's 5 addresses.
    assert_eq!(cap[0].available_ips, 252 - 1 - 5);

    p.detach_eni(&DetachEniOptions {
        eni_id: eni.id.clone(),
        instance_id: node.instance_id.clone(),
        attachment_id: None,
        priority: Priority::Release,
    })
    .await
    .unwrap();
    let mut wait = WaitEniOptions::new(&eni.id, WaitCondition::Detached);
    wait.poll_interval = Duration::from_millis(100);
    let detached = p.wait_for_eni(&wait).await.unwrap().unwrap();
    assert_eq!(detached.status, EniStatus::Available);
    assert_eq!(detached.instance_id, None);

    p.delete_eni(&DeleteEniOptions {
        eni_id: eni.id.clone(),
        priority: Priority::Release,
    })
    .await
    .unwrap();
    let mut wait = WaitEniOptions::new(&eni.id, WaitCondition::Deleted);
    wait.poll_interval = Duration::from_millis(100);
    assert!(p.wait_for_eni(&wait).await.unwrap().is_none());

    // Gone: delete and detach succeed, describe says NotFound.
    p.delete_eni(&DeleteEniOptions {
        eni_id: eni.id.clone(),
        priority: Priority::Release,
    })
    .await
    .unwrap();
    p.detach_eni(&DetachEniOptions {
        eni_id: eni.id.clone(),
        instance_id: node.instance_id.clone(),
        attachment_id: None,
        priority: Priority::Release,
    })
    .await
    .unwrap();
    let err = p.describe_eni(&eni.id, Priority::Refill).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");

    let s = stats.snapshot();
    assert!(s["CreateNetworkInterface"].ok >= 1);
    assert!(s["AssignPrivateIpAddresses"]
        .errors
        .contains_key("InvalidOperation.Ipv4CountExceeded"));
}

#[tokio::test]
async fn life_cycle_signature_v3() {
    life_cycle(SignatureVersion::V3).await;
}

#[tokio::test]
async fn life_cycle_signature_v1() {
    life_cycle(SignatureVersion::V1).await;
}

#[tokio::test]
async fn sts_keys_ram_role_and_bad_keys() {
    let mock = MockCloud::start();
    // STS keys with their token, both signature versions.
    for sig in [SignatureVersion::V1, SignatureVersion::V3] {
        let (s, _) = settings(Rate {
            per_second: 100.0,
            burst: 50,
        });
        let creds = CredentialProvider::fixed(
            AliyunCredentials::new("stsid", "stssecret").with_security_token("sts-token-xyz"),
        );
        let p = provider_with(&mock, sig, creds, s);
        p.list_enis(&ListEnisOptions::default()).await.unwrap();
    }
    // The RAM role from the metadata service (role name discovered).
    let md = Arc::new(MetadataClient::new(MetadataFlavor::Aliyun, &mock.url).unwrap());
    assert_eq!(md.ram_role().await.unwrap(), "node-role");
    let (s, _) = settings(Rate {
        per_second: 100.0,
        burst: 50,
    });
    let role = CredentialProvider::ram_role(md, None);
    let first = role.get().await.unwrap();
    assert!(first.access_key_id.starts_with("STS."));
    assert!(first.security_token.is_some());
    // Cached while far from expiry.
    assert_eq!(role.get().await.unwrap().access_key_id, first.access_key_id);
    let p = provider_with(&mock, SignatureVersion::V3, role, s);
    let node = p.node_info().await.unwrap();
    assert_eq!(node.instance_id, "i-node-a");

    // A margin longer than the key's life forces a refresh on every use.
    let md = Arc::new(MetadataClient::new(MetadataFlavor::Aliyun, &mock.url).unwrap());
    let eager = CredentialProvider::ram_role(md, Some("node-role".into()))
        .refresh_before(Duration::from_secs(7200));
    let a = eager.get().await.unwrap();
    let b = eager.get().await.unwrap();
    assert_ne!(a.access_key_id, b.access_key_id);

    // A wrong secret is an Auth error, not retried.
    let (s, stats) = settings(Rate {
        per_second: 100.0,
        burst: 50,
    });
    let bad = CredentialProvider::fixed(AliyunCredentials::new("testid", "wrong"));
    let p = provider_with(&mock, SignatureVersion::V3, bad, s);
    let err = p.list_enis(&ListEnisOptions::default()).await.unwrap_err();
    assert!(matches!(err, ProviderError::Auth { .. }), "{err:?}");
    assert_eq!(stats.api("DescribeNetworkInterfaces").calls, 1);
}

#[tokio::test]
async fn metadata_service() {
    let mock = MockCloud::start();
    let md = MetadataClient::new(MetadataFlavor::Aliyun, &mock.url).unwrap();
    assert_eq!(md.instance_id().await.unwrap(), "i-node-a");
    assert_eq!(md.instance_type().await.unwrap(), "ecs.g7.large");
    assert_eq!(md.region().await.unwrap(), "cn-hangzhou");
    assert_eq!(md.zone().await.unwrap(), "cn-hangzhou-h");
    let mac = md.primary_mac().await.unwrap();
    assert_eq!(md.macs().await.unwrap(), vec![mac.clone()]);
    let iface = md.interface(&mac).await.unwrap();
    assert_eq!(iface.eni_id, "eni-node-a-primary");
    assert_eq!(iface.primary_ip.to_string(), "192.168.1.10");
    assert_eq!(iface.ips, vec![iface.primary_ip]);
    assert_eq!(iface.subnet_cidr.to_string(), "192.168.1.0/24");
    assert_eq!(iface.gateway.to_string(), "192.168.1.253");
    let vpc: Vec<String> = md
        .vpc_cidrs()
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(vpc, ["192.168.0.0/16"]);
    let err = md.get("meta-data/no-such-thing").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test]
async fn throttling_is_retried_within_the_configured_rate() {
    let mock = MockCloud::start();
    // Client side: DescribeNetworkInterfaces at 5/s, burst 2.
    let (s, stats) = settings(Rate {
        per_second: 5.0,
        burst: 2,
    });
    let creds = CredentialProvider::fixed(AliyunCredentials::new("testid", "testsecret"));
    let p = Arc::new(provider_with(&mock, SignatureVersion::V3, creds, s));

    // Cloud side: one call per minute, used up at once, so every later call is throttled.
    mock.put_faults(json!({"faults": {"throttle_status": 429, "actions": {
        "DescribeNetworkInterfaces": {"per_minute": 1}}}}))
        .await;
    p.list_enis(&ListEnisOptions::default()).await.unwrap();
    let start = Instant::now();
    let task = {
        let p = p.clone();
        tokio::spawn(async move { p.list_enis(&ListEnisOptions::default()).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!task.is_finished(), "should still be throttled");
    let throttled_calls = mock.calls("DescribeNetworkInterfaces").await;
    // Lift the limit: the waiting call gets through after its next backoff.
    mock.put_faults(json!({"faults": {}})).await;
    let listed = task.await.unwrap();
    assert!(listed.is_ok(), "{listed:?}");
    let elapsed = start.elapsed();

    let total = mock.calls("DescribeNetworkInterfaces").await;
    let calls = mock.admin_get("calls").await;
    let throttles = calls["actions"]["DescribeNetworkInterfaces"]["errors"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("Throttling"))
                .map(|(_, v)| v.as_u64().unwrap())
                .sum::<u64>()
        })
        .unwrap_or(0);
    assert!(throttles >= 2, "calls: {calls}");
    // Never above what the client's bucket allows: burst + rate x time (+1 for the edge).
    let allowed = 2 + (5.0 * (elapsed.as_secs_f64() + 0.1)).ceil() as u64 + 1;
    assert!(total <= allowed, "{total} calls in {elapsed:?} > {allowed}");
    assert!(throttled_calls >= 3);
    let s = stats.api("DescribeNetworkInterfaces");
    assert_eq!(s.calls, total);
    assert_eq!(s.throttled, throttles);
    assert!(s.retries >= 2);
}

#[tokio::test]
async fn throttling_forever_gives_a_clear_error() {
    let mock = MockCloud::start();
    let (mut s, _) = settings(Rate {
        per_second: 50.0,
        burst: 5,
    });
    s.retry.max_elapsed = Duration::from_secs(2);
    let creds = CredentialProvider::fixed(AliyunCredentials::new("testid", "testsecret"));
    let p = provider_with(&mock, SignatureVersion::V1, creds, s);
    mock.put_faults(
        json!({"faults": {"actions": {"DescribeNetworkInterfaces": {"per_minute": 1}}}}),
    )
    .await;
    p.list_enis(&ListEnisOptions::default()).await.unwrap();
    let start = Instant::now();
    let err = p.list_enis(&ListEnisOptions::default()).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(4));
    assert!(
        matches!(err, ProviderError::RetriesExhausted { .. }),
        "{err:?}"
    );
    assert!(matches!(err.root(), ProviderError::Throttled { .. }));
    assert!(err.to_string().contains("giving up"), "{err}");
}

#[tokio::test]
async fn failures_and_dropped_answers_still_create_exactly_one_eni_each() {
    let mock = MockCloud::start();
    let (s, stats) = settings(Rate {
        per_second: 100.0,
        burst: 50,
    });
    let creds = CredentialProvider::fixed(AliyunCredentials::new("testid", "testsecret"));
    let p = provider_with(&mock, SignatureVersion::V3, creds, s);
    mock.put_faults(json!({"faults": {"actions": {"CreateNetworkInterface": {
        "error_rate": 0.4, "drop_rate": 0.4}}}}))
        .await;
    let n = 6;
    let mut ids = Vec::new();
    for i in 0..n {
        let tag = format!("create-{i}");
        let eni = p
            .create_eni(&create_opts(
                "vsw-h1",
                AddressCount::Ips(1),
                &[("cluster", "c1"), ("test", &tag)],
            ))
            .await
            .unwrap();
        ids.push(eni.id);
    }
    mock.put_faults(json!({"faults": {}})).await;
    let state = mock.admin_get("state").await;
    let secondaries: Vec<&serde_json::Value> = state["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "Secondary")
        .collect();
    assert_eq!(secondaries.len(), n, "state: {state}");
    for (i, id) in ids.iter().enumerate() {
        let listed = p
            .list_enis(&ListEnisOptions {
                tags: tags(&[("test", &format!("create-{i}"))]),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(&listed[0].id, id);
    }
    let s = stats.api("CreateNetworkInterface");
    assert!(s.retries >= 1, "no fault was injected? {s:?}");
    assert_eq!(s.ok, n as u64);
}

#[tokio::test]
async fn exhausted_vswitch_is_ip_exhausted() {
    let mock = MockCloud::start();
    let (p, _) = provider(&mock, SignatureVersion::V3);
    // vsw-h2 is a /28: 12 usable addresses.
    let err = p
        .create_eni(&create_opts("vsw-h2", AddressCount::Ips(20), &[]))
        .await
        .unwrap_err();
    match &err {
        ProviderError::IpExhausted { vswitch, .. } => {
            assert_eq!(vswitch.as_deref(), Some("vsw-h2"))
        }
        other => panic!("{other:?}"),
    }
    let small = p
        .create_eni(&create_opts("vsw-h2", AddressCount::None, &[]))
        .await
        .unwrap();
    p.create_eni(&create_opts("vsw-h2", AddressCount::Ips(9), &[]))
        .await
        .unwrap();
    // One address left; ask for two on the first ENI: the assign path names the vSwitch too.
    let err = p
        .assign_addresses(&AssignAddressesOptions {
            eni_id: small.id.clone(),
            addresses: AddressCount::Ips(2),
            idempotency_token: IdempotencyToken::random(),
            priority: Priority::PodWaiting,
        })
        .await
        .unwrap_err();
    match &err {
        ProviderError::IpExhausted { vswitch, .. } => {
            assert_eq!(vswitch.as_deref(), Some("vsw-h2"))
        }
        other => panic!("{other:?}"),
    }
    let cap = p
        .subnet_capacity(&SubnetCapacityOptions {
            subnet_ids: vec!["vsw-h2".into()],
            priority: Priority::Refill,
        })
        .await
        .unwrap();
    assert_eq!(cap[0].available_ips, 1);
}

#[tokio::test]
async fn prefixes_on_aliyun() {
    let mock = MockCloud::start();
    let (p, _) = provider(&mock, SignatureVersion::V3);
    let eni = p
        .create_eni(&create_opts("vsw-h1", AddressCount::Prefixes(1), &[]))
        .await
        .unwrap();
    assert_eq!(eni.prefixes.len(), 1);
    assert_eq!(eni.prefixes[0].prefix_len(), 28);
    let got = p
        .assign_addresses(&AssignAddressesOptions {
            eni_id: eni.id.clone(),
            addresses: AddressCount::Prefixes(2),
            idempotency_token: IdempotencyToken::random(),
            priority: Priority::Refill,
        })
        .await
        .unwrap();
    assert_eq!(got.prefixes.len(), 2);
    assert!(got.ips.is_empty());
    p.unassign_addresses(&UnassignAddressesOptions {
        eni_id: eni.id.clone(),
        ips: vec![],
        prefixes: got.prefixes.clone(),
        priority: Priority::Release,
    })
    .await
    .unwrap();
    let now = p.describe_eni(&eni.id, Priority::Refill).await.unwrap();
    assert_eq!(now.prefixes, eni.prefixes);
}
