"""Cache settings without a server: the [cache] table and its overrides, S3 settings, keys, part sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from trtforge.cache.config import load_cache_config
from trtforge.cache.objects import MAX_PARTS, PART_SIZE, ObjectCache, part_size, s3_config
from trtforge.cache.signing import check_trusted, generate_key, parse_public_key, sign
from trtforge.catalog import load_catalog
from trtforge.errors import CacheTrustError, CatalogError, UsageError


def test_cache_table_and_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalogue = tmp_path / "engines.toml"
    catalogue.write_text(
        '[cache]\nsubstituters = ["s3://engines/prod", "file:///mnt/engines"]\ntrusted_public_keys = ["k:AAAA"]\n'
        '[engines.x]\nmodel = "builtin:tiny"\nbackend = "reference"\n'
    )
    monkeypatch.delenv("TRTFORGE_SUBSTITUTERS", raising=False)
    monkeypatch.delenv("TRTFORGE_TRUSTED_KEYS", raising=False)
    config = load_cache_config(catalogue)
    assert config.substituters == ["s3://engines/prod", "file:///mnt/engines"]
    assert "x" in load_catalog(catalogue)  # the catalogue accepts the [cache] table next to [engines]
    monkeypatch.setenv("TRTFORGE_SUBSTITUTERS", "file:///other")
    monkeypatch.setenv("TRTFORGE_TRUSTED_KEYS", "")
    config = load_cache_config(catalogue)
    assert config.substituters == ["file:///other"] and config.trusted_public_keys == []

    monkeypatch.setenv("TRTFORGE_SUBSTITUTERS", "https://example.invalid/x")
    with pytest.raises(CatalogError, match="TRTFORGE_SUBSTITUTERS"):
        load_cache_config(catalogue)
    catalogue.write_text('[cache]\nsubstituter = ["s3://a/b"]\n')
    with pytest.raises(CatalogError, match=r"\[cache\] substituter"):
        load_cache_config(catalogue)


def test_s3_settings_from_variables_then_profile_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                     "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION"):  # fmt: skip
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "credentials").write_text("[team]\naws_access_key_id = AK\naws_secret_access_key = SK\n")
    (tmp_path / "config").write_text(
        "[profile team]\nregion = eu-west-1\nendpoint_url = http://s3.local:8333\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "team")
    config = s3_config()
    assert config["access_key_id"] == "AK" and config["secret_access_key"] == "SK"
    assert config["region"] == "eu-west-1" and config["endpoint"] == "http://s3.local:8333"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    config = s3_config()
    assert config["endpoint"] == "http://127.0.0.1:9" and config["region"] == "us-west-2"


@pytest.mark.parametrize("url", ["http://x/y", "s3://", "file://host/x", "file:relative", "ftp://a/b"])
def test_bad_cache_urls_are_one_line(url: str) -> None:
    with pytest.raises(UsageError, match="cache URL"):
        ObjectCache.open(url)


def test_part_size_keeps_under_the_part_limit() -> None:
    assert part_size(1) == PART_SIZE
    for size in (20 << 30, 80 << 30, 200 << 30, 5 << 40):
        parts = -(-size // part_size(size))
        assert parts <= MAX_PARTS and part_size(size) % (1 << 20) == 0


def test_keys_sign_and_refuse(tmp_path: Path) -> None:
    _secret_path, public_path, secret = generate_key("team-1", tmp_path)
    public = parse_public_key(public_path.read_text())
    signature = sign(secret, "ab" * 16, b"manifest")
    from trtforge.cache.signing import Signatures

    signed = Signatures(signatures=[signature])
    assert check_trusted("ab" * 16, b"manifest", signed, [public]) == "team-1"
    with pytest.raises(CacheTrustError, match="does not match"):
        check_trusted("ab" * 16, b"manifest!", signed, [public])
    with pytest.raises(CacheTrustError, match="does not match"):
        check_trusted("cd" * 16, b"manifest", signed, [public])
    with pytest.raises(UsageError, match="exists"):
        generate_key("team-1", tmp_path)
    for bad in ("nocolon", "k:***", "k:AAAA", "bad name:AAAA"):
        with pytest.raises(UsageError):
            parse_public_key(bad)
