"""Webhook URL rules (SSRF) and signatures, without the network: IP literals and localhost."""
import time

import pytest

from shared.api import ApiError
from shared.webhooks import UnsafeUrl, WebhookPolicy, callback_url, signature, verify_signature

POLICY = WebhookPolicy("k")


@pytest.mark.parametrize("url", [
    "http://8.8.8.8/hook",                 # https only
    "https://127.0.0.1/hook", "https://localhost:8443/x", "https://[::1]/",
    "https://10.0.0.1/", "https://172.16.5.4/", "https://192.168.0.1/", "https://100.64.0.1/",
    "https://169.254.169.254/latest/meta-data", "https://0.0.0.0/", "https://[fd00::1]/",
    "https://[::ffff:127.0.0.1]/", "https://224.0.0.1/",
    "https://user:secret@8.8.8.8/", "ftp://8.8.8.8/", "https:///nohost", "https://8.8.8.8:99999/",
    "x" * 2001, "",
])
def test_unsafe_urls_are_refused(url: str) -> None:
    with pytest.raises(UnsafeUrl):
        POLICY.check(url)


def test_public_https_and_allow_listed_hosts_pass() -> None:
    assert POLICY.check("https://8.8.8.8/hook?x=1") == "https://8.8.8.8/hook?x=1"
    local = WebhookPolicy("k", ("127.0.0.1", "10.1.0.0/16"))
    assert local.check("http://127.0.0.1:9000/hook")
    assert local.check("http://10.1.2.3/hook")
    with pytest.raises(UnsafeUrl):
        local.check("http://10.2.0.1/hook")    # outside the allowed range
    by_name = WebhookPolicy("k", ("localhost",))
    assert by_name.check("http://localhost:9000/x")


def test_callback_url_is_a_400_and_needs_a_key() -> None:
    assert callback_url(POLICY, {}) is None
    with pytest.raises(ApiError) as exc:
        callback_url(POLICY, {"callbackUrl": "https://10.0.0.1/"})
    assert (exc.value.status, exc.value.code) == (400, "InvalidCallbackUrl")
    with pytest.raises(ApiError) as off:
        callback_url(WebhookPolicy(""), {"callbackUrl": "https://8.8.8.8/"})
    assert "WEBHOOK_SIGNING_KEY" in off.value.message
    with pytest.raises(ApiError):
        callback_url(POLICY, {"callbackUrl": 5})


def test_signature_verifies_only_the_same_body_key_and_recent_time() -> None:
    now = int(time.time())
    header = signature("k", now, b'{"a":1}')
    assert verify_signature(header, b'{"a":1}', "k")
    assert not verify_signature(header, b'{"a":2}', "k")
    assert not verify_signature(header, b'{"a":1}', "other")
    assert not verify_signature(signature("k", now - 3600, b"x"), b"x", "k")
    assert not verify_signature("garbage", b"x", "k")
