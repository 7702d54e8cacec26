"""The web UI against ``cairn server --auth kubernetes`` on the local cluster's API server: the token box.

Needs only the API server (TokenReview, SubjectAccessReview), not the project image.
"""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By

from cairn.rundir import RunStatus
from cairn.store import TrackingStore, db
from tests.support.browser import build_ui, cairn_env, cairn_server, chromium, screenshot, wait_for

pytestmark = pytest.mark.cluster


def reader_token(kubectl, namespace: str) -> str:
    """A ServiceAccount's token that may get and list trainingruns in ``namespace`` only."""
    rules = [{"apiGroups": ["cairn.dev"], "resources": ["trainingruns"], "verbs": ["get", "list"]}]
    kubectl.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "ui-reader"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "ui-reader"},
         "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "ui-reader"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "ui-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "ui-reader", "namespace": namespace}]},
        namespace=namespace)
    return kubectl.run("-n", namespace, "create", "token", "ui-reader", "--duration=10m").stdout.strip()


def test_the_ui_asks_for_a_token_and_reads_the_namespace_it_grants(kubeconfig, kubectl, namespace, tmp_path):
    build_ui()
    url = f"sqlite:///{tmp_path / 'cairn.db'}"
    db.upgrade(db.get_engine(url))
    store = TrackingStore(url)
    run_id = store.create_run(experiment="ui-auth", name="granted-run", namespace=namespace)
    store.finish_run(run_id, RunStatus.FINISHED, 0)
    token = reader_token(kubectl, namespace)
    env = cairn_env(tmp_path / "home", KUBECONFIG=str(kubeconfig))

    with cairn_server(env, tmp_path / "server.log", "--auth", "kubernetes", "--database-url", url) as server, \
            chromium(tmp_path) as browser:
        browser.get(f"{server}#/runs?ns={namespace}")
        box = wait_for(browser, lambda d: d.find_elements(By.ID, "token-box"), "a 401 brings up the token box")[0]
        assert not browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")
        screenshot(browser, "token-box")
        box.find_element(By.NAME, "token").send_keys(token)
        box.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_for(browser, lambda d: [r.get_attribute("data-run-id")
                                     for r in d.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr")] == [run_id],
                 "with the token the namespace's run is listed")
        assert not browser.find_elements(By.ID, "token-box")
        assert browser.execute_script("return sessionStorage.getItem('cairn.token')") == token

        browser.get(f"{server}#/runs?ns=default")
        error = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".error"), "another namespace is refused")
        assert error[0].text.startswith("403") and "default" in error[0].text
        screenshot(browser, "token-403")
