"""Shared by the page's tests: the quick demo's runs, trained once per session."""
import pytest
import torch


@pytest.fixture(scope="session")
def quick_demo_runs(tmp_path_factory):
    """runs/demo layout (coarse, fine, baseline, tokenizer) at the quick demo's smoke-test size.
    C2F_APP_DEMO=DIR uses a finished demo instead (how docs/app-screenshot.png was taken)."""
    import os
    from pathlib import Path

    from coarse2fine.apps.demo import DemoPlan, run_demo

    if os.environ.get("C2F_APP_DEMO"):
        return Path(os.environ["C2F_APP_DEMO"])

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("app_demo")
    plan = DemoPlan.quick()
    plan.vq_steps, plan.limit_per_class, plan.per_class = 10, 12, 1
    run_demo(out, plan, progress=False)
    torch.set_num_threads(n)
    return out
