//! The HTTP API's secrets routes (docs/secrets.md): the keyring's status
//! and re-wrap, an environment's secrets and marked paths, Vault KV v2's
//! destroy and undelete.

use super::*;

/// This region's keyring (no key material) and its stored secret versions
/// by KEK version.
pub(super) async fn secrets_status(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Query(q): Q,
) -> Res {
    let (keyring, census) = st.secrets_census(&access, q_bool(&q, "reload")?).await?;
    ok(secrets_json(keyring, census))
}

/// An environment's secrets: lifecycle, never values.
pub(super) async fn secrets_list(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
) -> Res {
    let ns = ns_name(&project, &env);
    let list = st.list_secrets(&access, &ns, q_bool(&q, "due")?).await?;
    let (paths, inherited) = st.secret_paths(&access, &ns).await?;
    ok(json!({ "secrets": list, "paths": paths, "inherited_paths": inherited }))
}

/// Mark paths secret, or take marks off: `{"add": [..], "remove": [..]}`.
pub(super) async fn secrets_paths(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    only_fields(&b, "the body", &["add", "remove"])?;
    let list = |field: &str| -> Result<Vec<String>, CfgError> {
        match b.get(field) {
            None => Ok(Vec::new()),
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_str().map(str::to_string))
                        .collect::<Option<Vec<String>>>()
                })
                .ok_or_else(|| CfgError::invalid(format!("\"{field}\" is an array of paths"))),
        }
    };
    let (add, remove) = (list("add")?, list("remove")?);
    if add.is_empty() && remove.is_empty() {
        return Err(CfgError::invalid(
            "give paths to \"add\", to \"remove\" or both",
        ));
    }
    write_one(
        &access,
        &st,
        &project,
        &env,
        Op::SecretPaths { add, remove },
        &headers,
        &q,
    )
    .await
}

/// Vault KV v2's destroy: `{"versions": [1, 2]}`.
pub(super) async fn secrets_destroy(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, key)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    only_fields(&b, "the body", &["versions"])?;
    let versions = b
        .get("versions")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .ok_or_else(|| {
            CfgError::invalid("the body needs \"versions\": an array of whole numbers")
        })?;
    let r = st
        .destroy_secret(&access, &ns_name(&project, &env), &key, &versions)
        .await?;
    ok(r)
}

/// Undelete a deleted secret: `{}` (its last version) or `{"version": 3}`.
pub(super) async fn secrets_undelete(
    Caller(access): Caller,
    State(st): State<ConfigStore>,
    Path((project, env, key)): Path<(String, String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Res {
    let b = body_json(&headers, body)?;
    only_fields(&b, "the body", &["version"])?;
    let version = match b.get("version") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|v| *v > 0)
                .ok_or_else(|| CfgError::invalid("\"version\" must be a whole number from 1"))?,
        ),
    };
    let r = st
        .undelete_secret(
            &ns_name(&project, &env),
            &key,
            version,
            &write_opts(&access, &headers, &q)?,
        )
        .await?;
    ok(r)
}

/// Re-wrap every stored secret version under the active KEK.
pub(super) async fn secrets_rewrap(Caller(access): Caller, State(st): State<ConfigStore>) -> Res {
    let census = st.rewrap_secrets(&access).await?;
    ok(secrets_json(st.secrets_keyring(), census))
}

pub(super) fn secrets_json(
    keyring: crate::secrets::KeyringStatus,
    census: crate::configstore::engine::SecretsCensus,
) -> Value {
    let file = keyring.file.map(|p| p.display().to_string());
    let keyring = match keyring.keyring {
        Ok((active, versions)) => json!({
            "active": active,
            "versions": versions
                .iter()
                .map(|(v, c)| json!({"version": v, "fingerprint": crate::auth::tokens::hex(c)}))
                .collect::<Vec<_>>(),
        }),
        Err(e) => json!({ "error": e }),
    };
    json!({ "keyring_file": file, "keyring": keyring, "census": census })
}
