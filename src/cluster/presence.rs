//! Which other nodes hold sockets of which users: this node's copy of what
//! the others wrote in Redis, kept by their presence messages and read
//! again from Redis whenever a message may have been missed. Looked up for
//! every invite to a local user, without waiting on Redis.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use smallvec::SmallVec;

use crate::address::Address;

#[derive(Default)]
pub struct Presence {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    by_user: HashMap<Address, SmallVec<[Arc<str>; 2]>>,
    by_node: HashMap<Arc<str>, HashSet<Address>>,
}

impl Inner {
    fn add(&mut self, node: &Arc<str>, user: Address) {
        let nodes = self.by_user.entry(user.clone()).or_default();
        if !nodes.contains(node) {
            nodes.push(node.clone());
        }
        self.by_node.entry(node.clone()).or_default().insert(user);
    }

    fn remove(&mut self, node: &str, user: &Address) {
        if let Some(nodes) = self.by_user.get_mut(user) {
            nodes.retain(|n| &**n != node);
            if nodes.is_empty() {
                self.by_user.remove(user);
            }
        }
        if let Some(users) = self.by_node.get_mut(node) {
            users.remove(user);
        }
    }

    fn drop_node(&mut self, node: &str) {
        for user in self.by_node.remove(node).unwrap_or_default() {
            self.remove(node, &user);
        }
    }
}

impl Presence {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// `node` holds a socket of `user` (`here`), or no longer does.
    pub fn set(&self, node: &str, user: Address, here: bool) {
        let mut inner = self.write();
        if here {
            let node: Arc<str> = Arc::from(node);
            inner.add(&node, user);
        } else {
            inner.remove(node, &user);
        }
    }

    /// Everything known of `node` is replaced by `users` (read from Redis).
    pub fn replace(&self, node: &str, users: impl IntoIterator<Item = Address>) {
        let node: Arc<str> = Arc::from(node);
        let mut inner = self.write();
        inner.drop_node(&node);
        for user in users {
            inner.add(&node, user);
        }
    }

    /// `node` is dead or gone: it holds nobody.
    pub fn drop_node(&self, node: &str) {
        self.write().drop_node(node);
    }

    /// The nodes holding sockets of `user`.
    pub fn nodes_of(&self, user: &Address) -> SmallVec<[Arc<str>; 2]> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_user
            .get(user)
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    fn names(p: &Presence, user: &str) -> Vec<String> {
        let mut v: Vec<String> = p.nodes_of(&a(user)).iter().map(|n| n.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn changes_snapshots_and_dead_nodes() {
        let p = Presence::default();
        p.set("n2", a("bob@x.test"), true);
        p.set("n3", a("bob@x.test"), true);
        p.set("n3", a("bob@x.test"), true);
        assert_eq!(names(&p, "bob@x.test"), ["n2", "n3"]);
        p.set("n2", a("bob@x.test"), false);
        assert_eq!(names(&p, "bob@x.test"), ["n3"]);
        // A snapshot replaces all that was known of the node.
        p.set("n3", a("carol@x.test"), true);
        p.replace("n3", [a("dave@x.test")]);
        assert!(names(&p, "bob@x.test").is_empty());
        assert!(names(&p, "carol@x.test").is_empty());
        assert_eq!(names(&p, "dave@x.test"), ["n3"]);
        p.drop_node("n3");
        assert!(names(&p, "dave@x.test").is_empty());
    }
}
