//! Authentication and authorization against a metadata view: every way a
//! credential is refused, and every permission denied where it should be.

use super::*;

const NOW_MS: u64 = 1_000_000;

struct Fixture {
    view: MetaView,
    root: String,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            view: MetaView::default(),
            root: tokens::generate(tokens::ROOT_ID),
        }
    }

    fn role(&mut self, name: &str, json: &str) {
        self.view
            .records
            .push((format!("role/{name}"), json.into()));
    }

    fn token(
        &mut self,
        principal: &str,
        roles: &[&str],
        project: Option<&str>,
        expires_ms: Option<u64>,
    ) -> String {
        let id = tokens::new_id();
        let t = tokens::generate(&id);
        let rec = TokenRecord {
            principal: principal.into(),
            sha256: tokens::sha256_hex(&t),
            created_ms: 0,
            expires_ms,
            project: project.map(str::to_string),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            created_by: "root".into(),
            description: String::new(),
        };
        self.view
            .records
            .push((format!("token/{id}"), serde_json::to_string(&rec).unwrap()));
        t
    }

    fn authority(&self) -> Authority {
        let mut v = self.view.clone();
        v.records.sort();
        let (_tx, rx) = watch::channel(Arc::new(AuthState::from_view(&v)));
        Authority::new(true, Some(tokens::sha256_hex(&self.root)), rx)
    }
}

fn reason(r: Result<Access, AuthError>) -> Reason {
    match r {
        Ok(_) => panic!("authenticated"),
        Err(e) => e.reason,
    }
}

#[test]
fn credentials_are_refused_when_missing_garbled_unknown_expired_or_revoked() {
    let mut f = Fixture::new();
    let good = f.token("ci", &[], None, None);
    let expired = f.token("ci", &[], None, Some(NOW_MS));
    let revoked = f.token("ci", &[], None, None);
    let revoked_id = tokens::parse_id(&revoked).unwrap().to_string();
    f.view
        .records
        .push((format!("token-revoked/{revoked_id}"), "1".into()));
    let a = f.authority();
    assert_eq!(
        reason(a.authenticate(None, None, NOW_MS)),
        Reason::Unauthenticated
    );
    assert_eq!(
        reason(a.authenticate(Some("hunter2"), None, NOW_MS)),
        Reason::Unauthenticated
    );
    let unknown = tokens::generate(&tokens::new_id());
    assert_eq!(
        reason(a.authenticate(Some(&unknown), None, NOW_MS)),
        Reason::Unauthenticated
    );
    // The right id with the wrong secret.
    let forged = tokens::generate(tokens::parse_id(&good).unwrap());
    assert_eq!(
        reason(a.authenticate(Some(&forged), None, NOW_MS)),
        Reason::Unauthenticated
    );
    assert_eq!(
        reason(a.authenticate(Some(&expired), None, NOW_MS)),
        Reason::TokenExpired
    );
    assert!(a.authenticate(Some(&expired), None, NOW_MS - 1).is_ok());
    assert_eq!(
        reason(a.authenticate(Some(&revoked), None, NOW_MS)),
        Reason::TokenRevoked
    );
    let wrong_root = tokens::generate(tokens::ROOT_ID);
    assert_eq!(
        reason(a.authenticate(Some(&wrong_root), None, NOW_MS)),
        Reason::Unauthenticated
    );
    let p = a.authenticate(Some(&good), None, NOW_MS).unwrap().principal;
    assert_eq!((p.name.as_str(), p.method), ("ci", Method::Token));
    let r = a.authenticate(Some(&f.root), None, NOW_MS).unwrap();
    assert_eq!(r.principal.method, Method::Root);
    assert!(r.allowed(Action::Grant, Resource::CLUSTER));
}

#[test]
fn a_client_certificate_names_a_principal_whose_grants_decide() {
    let mut f = Fixture::new();
    f.role(
        "shop-reader",
        r#"{"rules": [{"effect": "allow", "projects": ["shop"], "actions": ["read"]}]}"#,
    );
    f.view
        .grants
        .push(("alice".into(), role_permission("shop-reader")));
    let a = f.authority();
    let alice = a.authenticate(None, Some("alice"), NOW_MS).unwrap();
    assert_eq!(alice.principal.method, Method::Certificate);
    assert_eq!(alice.principal.roles, ["shop-reader"]);
    assert!(alice.allowed(Action::Read, Resource::in_namespace("shop/prod", "k")));
    assert!(!alice.allowed(Action::Write, Resource::in_namespace("shop/prod", "k")));
    // A certificate without grants proves a name and allows nothing.
    let bob = a.authenticate(None, Some("bob"), NOW_MS).unwrap();
    assert!(bob.principal.roles.is_empty());
    assert!(!bob.allowed(Action::Read, Resource::in_namespace("shop/prod", "k")));
    // A token, when sent, decides alone: a bad one is refused even over a
    // good certificate, and a good one acts as its own principal.
    assert_eq!(
        reason(a.authenticate(Some("mrd_garbage"), Some("alice"), NOW_MS)),
        Reason::Unauthenticated
    );
    let t = f.token("ci", &[], None, None);
    let a = f.authority();
    let ci = a.authenticate(Some(&t), Some("alice"), NOW_MS).unwrap();
    assert_eq!(
        (ci.principal.name.as_str(), ci.principal.method),
        ("ci", Method::Token)
    );
}

#[test]
fn what_no_rule_allows_is_denied_and_deny_beats_allow() {
    let mut f = Fixture::new();
    f.role(
        "shop-reader",
        r#"{"rules": [{"effect": "allow", "projects": ["shop"], "actions": ["read"]}]}"#,
    );
    f.role(
        "shop-writer",
        r#"{"rules": [{"effect": "allow", "projects": ["shop"], "actions": ["read", "write", "delete"]}]}"#,
    );
    f.role(
        "no-secrets",
        r#"{"rules": [{"effect": "deny", "keys": ["secrets.*"], "actions": ["read", "write", "delete"]}]}"#,
    );
    let none = f.token("nobody", &[], None, None);
    let reader = f.token("ann", &["shop-reader"], None, None);
    let writer = f.token("bob", &["shop-writer", "no-secrets"], None, None);
    let rooted_but_denied = f.token("eve", &["root", "no-secrets"], None, None);
    let broken_role = f.token("kim", &["ghost"], None, None);
    let a = f.authority();
    let who = |t: &str| a.authenticate(Some(t), None, NOW_MS).unwrap();
    let (r, w) = (Action::Read, Action::Write);
    let at = Resource::in_namespace;
    assert!(!who(&none).allowed(r, at("shop/prod", "a")));
    assert!(!who(&broken_role).allowed(r, at("shop/prod", "a")));
    assert!(who(&reader).allowed(r, at("shop/prod", "a")));
    assert!(!who(&reader).allowed(w, at("shop/prod", "a")));
    assert!(!who(&reader).allowed(Action::Delete, at("shop/prod", "a")));
    assert!(!who(&reader).allowed(r, at("blog/prod", "a")));
    assert!(!who(&reader).allowed(Action::Admin, at("shop/prod", "")));
    assert!(who(&writer).allowed(w, at("shop/prod", "a")));
    assert!(!who(&writer).allowed(w, at("shop/prod", "secrets.db")));
    assert!(!who(&writer).allowed(r, at("shop/prod", "secrets.db")));
    assert!(!who(&rooted_but_denied).allowed(r, at("x/y", "secrets.k")));
    assert!(who(&rooted_but_denied).allowed(r, at("x/y", "k")));
    let e = who(&reader).check_key(w, "shop/prod", "a").unwrap_err();
    assert_eq!(e.reason, Reason::PermissionDenied);
    assert!(
        e.message
            .contains("ann may not write key \"a\" in shop/prod"),
        "{e}"
    );
    assert!(who(&reader).may_read_somewhere("shop/prod"));
    assert!(!who(&reader).may_read_somewhere("blog/prod"));
    assert!(!who(&none).may_read_somewhere("shop/prod"));
}

#[test]
fn a_project_scoped_token_acts_only_in_its_project() {
    let mut f = Fixture::new();
    let scoped = f.token("team-a", &["root"], Some("alpha"), None);
    let a = f.authority();
    let acc = a.authenticate(Some(&scoped), None, NOW_MS).unwrap();
    assert!(acc.allowed(Action::Write, Resource::in_namespace("alpha/prod", "k")));
    assert!(!acc.allowed(Action::Read, Resource::in_namespace("beta/prod", "k")));
    assert!(!acc.allowed(Action::Grant, Resource::CLUSTER));
    assert!(!acc.may_read_somewhere("beta/prod"));
}

#[test]
fn roles_granted_to_a_principal_count_until_the_grant_is_revoked() {
    use meridian_core::meta::MetaDoc;
    use meridian_core::types::MetaOp;
    let mut f = Fixture::new();
    f.role(
        "reader",
        r#"{"rules": [{"effect": "allow", "actions": ["read"]}]}"#,
    );
    let t = f.token("ops", &[], None, None);
    let mut doc = MetaDoc::load(&[], 0, 1, 1).unwrap();
    for (k, v) in &f.view.records {
        doc.apply(&MetaOp::PutRecord {
            key: k.clone(),
            value: v.clone(),
        })
        .unwrap();
    }
    let grant = MetaOp::Grant {
        principal: "ops".into(),
        permission: role_permission("reader"),
    };
    doc.apply(&grant).unwrap();
    let judge = |doc: &MetaDoc| {
        let (_tx, rx) = watch::channel(Arc::new(AuthState::from_view(&doc.view())));
        let a = Authority::new(true, None, rx);
        a.authenticate(Some(&t), None, NOW_MS)
            .unwrap()
            .allowed(Action::Read, Resource::in_namespace("p/e", "k"))
    };
    assert!(judge(&doc));
    doc.apply(&MetaOp::Revoke {
        principal: "ops".into(),
        permission: role_permission("reader"),
    })
    .unwrap();
    assert!(!judge(&doc));
}

#[test]
fn broken_records_grant_nothing_and_are_reported() {
    let mut f = Fixture::new();
    f.role(
        "bad",
        r#"{"rules": [{"effect": "allow", "projects": ["[x"], "actions": ["read"]}]}"#,
    );
    f.view
        .records
        .push(("token/0123456789abcdef".into(), "{not json".into()));
    let s = AuthState::from_view(&f.view);
    assert!(s.broken.contains_key("role/bad"));
    assert!(s.broken.contains_key("token/0123456789abcdef"));
    assert!(!s.role_exists("bad"));
    assert!(s.role_exists("root"));
}

#[test]
fn auth_off_allows_everything_and_keeps_the_typed_author() {
    let acc = Authority::disabled().authenticate(None, None, 0).unwrap();
    assert!(acc.allowed(Action::Grant, Resource::CLUSTER));
    assert_eq!(acc.author("typed"), "typed");
}

fn oidc_config(jwks_file: &std::path::Path) -> crate::config::OidcConfig {
    let toml = format!(
        "issuer = \"https://idp.example\"\naudience = \"meridian\"\njwks_file = \"{}\"\n\
         roles_claim = \"groups\"\n[role_map]\nshop-team = [\"shop-reader\"]\n",
        jwks_file.display()
    );
    toml::from_str(&toml).unwrap()
}

#[test]
fn jwts_are_verified_against_issuer_audience_keys_and_time() {
    use oidc::testkit::TestIssuer;
    let idp = TestIssuer::new("k1");
    let stranger = TestIssuer::new("k1"); // same key id, another key
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, TestIssuer::jwks(&[&idp])).unwrap();
    let mut f = Fixture::new();
    f.role(
        "shop-reader",
        r#"{"rules": [{"effect": "allow", "projects": ["shop"], "actions": ["read"]}]}"#,
    );
    f.role(
        "blog-reader",
        r#"{"rules": [{"effect": "allow", "projects": ["blog"], "actions": ["read"]}]}"#,
    );
    f.view
        .grants
        .push(("oidc:alice".into(), role_permission("blog-reader")));
    let a = f
        .authority()
        .with_oidc(oidc::Oidc::load(&oidc_config(&jwks)).unwrap());
    let now_s = wall_ms() / 1000;
    let claims = |iss: &str, aud: &str, exp: u64| {
        serde_json::json!({
            "iss": iss, "aud": aud, "exp": exp, "sub": "alice",
            "groups": ["shop-team", "unmapped"],
        })
    };
    let good = idp.sign(&claims("https://idp.example", "meridian", now_s + 600));
    let acc = a.authenticate(Some(&good), None, NOW_MS).unwrap();
    assert_eq!(acc.principal.name, "oidc:alice");
    assert_eq!(acc.principal.method, Method::Jwt);
    assert_eq!(acc.principal.roles, ["blog-reader", "shop-reader"]);
    assert!(acc.allowed(Action::Read, Resource::in_namespace("shop/prod", "k")));
    assert!(!acc.allowed(Action::Write, Resource::in_namespace("shop/prod", "k")));

    let refused = |jwt: &str| match a.authenticate(Some(jwt), None, NOW_MS) {
        Ok(_) => panic!("accepted"),
        Err(e) => (e.reason, e.message),
    };
    let (r, m) = refused(&idp.sign(&claims("https://evil.example", "meridian", now_s + 600)));
    assert_eq!(r, Reason::Unauthenticated);
    assert!(m.contains("issuer"), "{m}");
    let (r, m) = refused(&idp.sign(&claims("https://idp.example", "other-app", now_s + 600)));
    assert_eq!(r, Reason::Unauthenticated);
    assert!(m.contains("audience"), "{m}");
    let (r, m) = refused(&stranger.sign(&claims("https://idp.example", "meridian", now_s + 600)));
    assert_eq!(r, Reason::Unauthenticated);
    assert!(m.contains("signature"), "{m}");
    let (r, _) = refused(&idp.sign(&claims("https://idp.example", "meridian", now_s - 3600)));
    assert_eq!(r, Reason::TokenExpired);
    let (r, m) = refused(&TestIssuer::new("k9").sign(&claims(
        "https://idp.example",
        "meridian",
        now_s + 600,
    )));
    assert_eq!(r, Reason::Unauthenticated);
    assert!(m.contains("\"k9\""), "{m}");
    // An HMAC token (alg confusion with the public key) is not accepted.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("https://idp.example", "meridian", now_s + 600),
        &jsonwebtoken::EncodingKey::from_secret(b"k1"),
    )
    .unwrap();
    let (r, m) = refused(&hs);
    assert_eq!(r, Reason::Unauthenticated);
    assert!(m.contains("HS256"), "{m}");
    let (_, m) = refused("eyJhbGciOi.garbage.here");
    assert!(m.contains("malformed"), "{m}");
    let no_sub = idp.sign(&serde_json::json!({
        "iss": "https://idp.example", "aud": "meridian", "exp": now_s + 600,
    }));
    let (_, m) = refused(&no_sub);
    assert!(m.contains("\"sub\""), "{m}");
    // A region without [auth.oidc] says why it refuses a JWT.
    let (r, m) = match f.authority().authenticate(Some(&good), None, NOW_MS) {
        Ok(_) => panic!("accepted"),
        Err(e) => (e.reason, e.message),
    };
    assert_eq!(r, Reason::Unauthenticated);
    assert!(m.contains("[auth.oidc]"), "{m}");
}

/// A token verified once is served from the cache afterwards, but never
/// past its expiry, and never after the auth state changed (a revocation,
/// or a change to the principal's roles).
#[test]
fn cached_tokens_expire_and_are_dropped_when_the_state_changes() {
    let mut f = Fixture::new();
    let t = f.token("ci", &["reader"], None, Some(NOW_MS + 10));
    let other = f.token("ci", &[], None, None);
    let mut v = f.view.clone();
    v.records.sort();
    let (tx, rx) = watch::channel(Arc::new(AuthState::from_view(&v)));
    let a = Authority::new(true, Some(tokens::sha256_hex(&f.root)), rx);
    let first = a.authenticate(Some(&t), None, NOW_MS).unwrap();
    let again = a.authenticate(Some(&t), None, NOW_MS + 1).unwrap();
    assert!(
        Arc::ptr_eq(&first.principal, &again.principal),
        "the second call is served from the cache"
    );
    // A different token of the same length is not mistaken for it.
    assert!(!Arc::ptr_eq(
        &a.authenticate(Some(&other), None, NOW_MS)
            .unwrap()
            .principal,
        &first.principal
    ));
    assert_eq!(
        reason(a.authenticate(Some(&t), None, NOW_MS + 10)),
        Reason::TokenExpired,
        "expiry is checked on a cache hit too"
    );
    // Revoke it: the next call sees the new state, whatever was cached.
    let id = tokens::parse_id(&t).unwrap().to_string();
    v.records.push((format!("token-revoked/{id}"), "1".into()));
    v.records.sort();
    tx.send(Arc::new(AuthState::from_view(&v))).unwrap();
    assert_eq!(
        reason(a.authenticate(Some(&t), None, NOW_MS + 2)),
        Reason::TokenRevoked
    );
}
