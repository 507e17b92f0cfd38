"""A model that is not on this machine: decided in one quick request, reported in one line that says
what happened (unreachable hub, gated or unknown repository, another hub error) and what to do.

No test touches the network: the hub's single HEAD request is replaced by a function that answers the
way the hub (or a missing network) would, and huggingface_hub itself turns that answer into its error.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import invoke

HUB_ID = "probe-test/not-a-model"
GOOD = ["--image", "skimage:astronaut", "--prompt", "<image> What is shown?"]


def hub_answer(status: int, error_code: str | None):
    """What the hub's HEAD on config.json raises for this HTTP status / X-Error-Code."""
    try:
        import httpx2 as httpx  # what huggingface_hub >= 2 speaks
    except ImportError:
        import httpx
    from huggingface_hub.utils import hf_raise_for_status

    url = f"https://huggingface.co/{HUB_ID}/resolve/main/config.json"
    headers = {"X-Error-Code": error_code} if error_code else {}
    response = httpx.Response(status, headers=headers, request=httpx.Request("HEAD", url))

    def head(*args, **kwargs):
        hf_raise_for_status(response)
        raise AssertionError(f"status {status} was not an error")

    return head


def no_network(*args, **kwargs):
    raise ConnectionError("[Errno -2] Name or service not known")


@pytest.fixture
def online(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE unset, an empty HF cache, and a counter of requests to the hub."""
    import huggingface_hub
    from huggingface_hub import constants

    import probe.attention_job  # noqa: F401  (imported up front: the timings measure the decision only)
    import probe.zoo  # noqa: F401

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    calls = []

    def install(answer):
        def counted(*args, **kwargs):
            calls.append(args)
            return answer(*args, **kwargs)

        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", counted)
        return calls

    return install


def run(capsys, tmp_path, model: str) -> tuple[int, str, float]:
    start = time.perf_counter()
    code, _, err = invoke(capsys, "attention", "--model", model, *GOOD, "--out", str(tmp_path / "run"))
    seconds = time.perf_counter() - start
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # no retry chatter, no warnings: the error line only
    assert not (tmp_path / "run").exists()
    return code, lines[0], seconds


@pytest.mark.parametrize("model", [HUB_ID, "llava-v1.5-7b"])
def test_unreachable_hub_is_decided_at_once(model, online, capsys, tmp_path):
    calls = online(no_network)
    code, line, seconds = run(capsys, tmp_path, model)
    assert code == 2
    assert len(calls) == 1  # one attempt, no retries
    assert seconds < 5
    assert line.startswith("error: weights for '") and "not available locally" in line
    assert "hub is unreachable" in line and "HF_HUB_OFFLINE" in line and "--model DIR" in line


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (403, "GatedRepo", "is a gated model"),
        (401, "RepoNotFound", f"no model '{HUB_ID}' on the Hugging Face hub"),
        (500, None, "the hub answered"),
    ],
)
def test_hub_errors_are_not_reported_as_missing_weights(status, code, expected, online, capsys, tmp_path):
    calls = online(hub_answer(status, code))
    exit_code, line, seconds = run(capsys, tmp_path, HUB_ID)
    assert exit_code == 2 and len(calls) == 1 and seconds < 5
    assert expected in line, line
    assert "not available locally" not in line


def test_offline_never_asks_the_hub(online, capsys, tmp_path, monkeypatch):
    calls = online(no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, line, _ = run(capsys, tmp_path, HUB_ID)
    assert code == 2 and calls == []
    assert "not available locally and HF_HUB_OFFLINE is set" in line and "--model DIR" in line


@pytest.mark.parametrize("model", ["/no/such/dir", "./no-such-dir", "~/no-such-dir-for-probe", "a/b/c"])
def test_path_that_does_not_exist(model, online, capsys, tmp_path):
    calls = online(no_network)
    code, line, _ = run(capsys, tmp_path, model)
    assert code == 2 and calls == []
    assert line == f"error: model directory {model} does not exist"
