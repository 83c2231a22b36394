//! IPv4 policy routing rules (`ip -4 rule`): add, delete, list.
//!
//! Owns the translation between [`Rule`] and `RTM_*RULE` messages. Rules here always
//! look up a table (`FR_ACT_TO_TBL`); other actions are listed but not created.

use std::net::IpAddr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::handle::Handle;

/// A policy rule (`ip rule add [priority P] [from PREFIX] [to PREFIX] [iif NAME]
/// [oif NAME] table T`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Priority (`pref`); `None` lets the kernel choose on add, and matches any on delete.
    pub priority: Option<u32>,
    /// Source prefix (`from`); `None` is `from all`.
    pub from: Option<Ipv4Net>,
    /// Destination prefix (`to`).
    pub to: Option<Ipv4Net>,
    /// Table to look up. On delete, `0` matches any table.
    pub table: u32,
    /// Incoming interface name (`iif`).
    pub iif: Option<String>,
    /// Outgoing interface name (`oif`).
    pub oif: Option<String>,
}

impl Rule {
    /// `from all lookup TABLE`, kernel-chosen priority.
    pub fn new(table: u32) -> Self {
        Rule {
            priority: None,
            from: None,
            to: None,
            table,
            iif: None,
            oif: None,
        }
    }
    /// Sets the priority.
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = Some(priority);
        self
    }
    /// Sets the source prefix (normalised).
    pub fn from(mut self, from: Ipv4Net) -> Self {
        self.from = Some(from.trunc());
        self
    }
    /// Sets the destination prefix (normalised).
    pub fn to(mut self, to: Ipv4Net) -> Self {
        self.to = Some(to.trunc());
        self
    }
    /// Sets the incoming interface.
    pub fn iif(mut self, name: impl Into<String>) -> Self {
        self.iif = Some(name.into());
        self
    }
    /// Sets the outgoing interface.
    pub fn oif(mut self, name: impl Into<String>) -> Self {
        self.oif = Some(name.into());
        self
    }

    pub(crate) fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(p) = self.priority {
            s += &format!("pref {p} ");
        }
        match self.from {
            Some(f) => s += &format!("from {f}"),
            None => s += "from all",
        }
        if let Some(t) = self.to {
            s += &format!(" to {t}");
        }
        if let Some(i) = &self.iif {
            s += &format!(" iif {i}");
        }
        if let Some(o) = &self.oif {
            s += &format!(" oif {o}");
        }
        s + &format!(" lookup {}", self.table)
    }

    pub(crate) fn to_message(&self) -> RuleMessage {
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.table = u8::try_from(self.table).unwrap_or(0);
        msg.header.action = if self.table == 0 {
            RuleAction::Unspec
        } else {
            RuleAction::ToTable
        };
        let a = &mut msg.attributes;
        if self.table != 0 {
            a.push(RuleAttribute::Table(self.table));
        }
        if let Some(p) = self.priority {
            a.push(RuleAttribute::Priority(p));
        }
        if let Some(f) = self.from {
            msg.header.src_len = f.prefix_len();
            a.push(RuleAttribute::Source(IpAddr::V4(f.addr())));
        }
        if let Some(t) = self.to {
            msg.header.dst_len = t.prefix_len();
            a.push(RuleAttribute::Destination(IpAddr::V4(t.addr())));
        }
        if let Some(i) = &self.iif {
            a.push(RuleAttribute::Iifname(i.clone()));
        }
        if let Some(o) = &self.oif {
            a.push(RuleAttribute::Oifname(o.clone()));
        }
        msg
    }

    pub(crate) fn from_message(msg: &RuleMessage) -> Option<Self> {
        if msg.header.family != AddressFamily::Inet {
            return None;
        }
        let mut rule = Rule::new(u32::from(msg.header.table));
        rule.priority = Some(0); // the kernel omits FRA_PRIORITY for priority 0
        for attr in &msg.attributes {
            match attr {
                RuleAttribute::Table(t) => rule.table = *t,
                RuleAttribute::Priority(p) => rule.priority = Some(*p),
                RuleAttribute::Source(IpAddr::V4(ip)) => {
                    rule.from = Ipv4Net::new(*ip, msg.header.src_len).ok();
                }
                RuleAttribute::Destination(IpAddr::V4(ip)) => {
                    rule.to = Ipv4Net::new(*ip, msg.header.dst_len).ok();
                }
                RuleAttribute::Iifname(i) => rule.iif = Some(i.clone()),
                RuleAttribute::Oifname(o) => rule.oif = Some(o.clone()),
                _ => {}
            }
        }
        Some(rule)
    }
}

impl Handle {
    /// `ip rule add`: `EEXIST` ([`crate::Error::is_exists`]) if an identical rule exists.
    pub fn rule_add(&mut self, rule: &Rule) -> Result<()> {
        self.change(
            "rule add",
            &|| rule.describe(),
            RouteNetlinkMessage::NewRule(rule.to_message()),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// `ip rule del`: deletes the first rule matching every field that is set; `ENOENT`
    /// ([`crate::Error::is_not_found`]) if none matches.
    pub fn rule_del(&mut self, rule: &Rule) -> Result<()> {
        self.change(
            "rule del",
            &|| rule.describe(),
            RouteNetlinkMessage::DelRule(rule.to_message()),
            0,
        )
        .map(drop)
    }

    /// `ip -4 rule show`.
    pub fn rule_list(&mut self) -> Result<Vec<Rule>> {
        let mut req = RuleMessage::default();
        req.header.family = AddressFamily::Inet;
        let replies = self.dump("rule list", RouteNetlinkMessage::GetRule(req))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Rule::from_message(r),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_message_round_trip() {
        let rule = Rule::new(1002)
            .priority(512)
            .from("10.0.3.7/32".parse().unwrap())
            .to("192.168.0.0/16".parse().unwrap())
            .iif("veth1")
            .oif("eth1");
        let msg = rule.to_message();
        assert_eq!(msg.header.src_len, 32);
        assert_eq!(msg.header.dst_len, 16);
        assert_eq!(msg.header.action, RuleAction::ToTable);
        assert_eq!(Rule::from_message(&msg), Some(rule));
    }
}
