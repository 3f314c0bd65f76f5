"""stream/oauth.py: the OAUTHBEARER token provider (fixed token or a file kept fresh elsewhere)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from stream.errors import ClusterError
from stream.oauth import TokenProvider, bearer_token_problem, jwt_expiry

NOW = 1_800_000_000.0


def jwt(claims: dict[str, object]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


async def test_file_token_is_read_again_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("first-token\n")
    provider = TokenProvider(path=path, clock=lambda: NOW)
    assert await provider.token() == "first-token"
    path.write_text("second-token")  # whatever keeps the file fresh replaced it
    assert await provider.token() == "second-token"


async def test_fixed_token_is_returned_as_given() -> None:
    assert await TokenProvider(token="abc~def+/==", clock=lambda: NOW).token() == "abc~def+/=="


@pytest.mark.parametrize(("content", "message"), [
    ("", "the token is empty"),
    ("   \n", "the token is empty"),
    ('{"access_token": "x"}', "characters a bearer token cannot hold"),
    ("two words", "characters a bearer token cannot hold"),
])
async def test_file_without_a_bearer_token_is_a_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ClusterError, match=message) as info:
        await TokenProvider(path=path).token()
    assert str(path) in str(info.value)


async def test_missing_file_is_a_retriable_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(ClusterError, match="cannot read the OAUTHBEARER token file .*absent") as info:
        await TokenProvider(path=path).token()
    assert info.value.retriable  # the file may appear (a sidecar starting late)


async def test_expired_jwt_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(jwt({"sub": "mmstream", "exp": int(NOW) - 31}))
    with pytest.raises(ClusterError, match=r"expired at .*whatever refreshes the file has stopped"):
        await TokenProvider(path=path, clock=lambda: NOW).token()


async def test_jwt_within_the_clock_skew_or_unexpired_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "token"
    for exp in (int(NOW) - 29, int(NOW) + 3600):
        token = jwt({"exp": exp})
        path.write_text(token)
        assert await TokenProvider(path=path, clock=lambda: NOW).token() == token


def test_jwt_expiry_reads_exp_and_ignores_opaque_tokens() -> None:
    assert jwt_expiry(jwt({"exp": 123})) == 123.0
    assert jwt_expiry(jwt({"sub": "x"})) is None
    assert jwt_expiry(jwt({"exp": True})) is None
    assert jwt_expiry("opaque-token") is None
    assert jwt_expiry("a.!!!.c") is None
    assert jwt_expiry("a." + base64.urlsafe_b64encode(b"[1]").decode() + ".c") is None


def test_bearer_token_charset() -> None:
    assert bearer_token_problem("aZ09-._~+/==") is None
    assert bearer_token_problem("a=b") is not None  # "=" only as padding at the end
    assert bearer_token_problem('"quoted"') is not None


def test_exactly_one_source() -> None:
    with pytest.raises(ValueError):
        TokenProvider()
    with pytest.raises(ValueError):
        TokenProvider(token="t", path=Path("/t"))
