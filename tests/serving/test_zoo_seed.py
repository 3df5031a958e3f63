"""The seed's step 1 as written: a real DeepSparse Server serves `model.uri: zoo:<stub>`, downloading the stub's
ONNX from SparseZoo (the SparseZoo double) at the API URL the operator's setting gives the server pods."""

from __future__ import annotations

from pathlib import Path

import pytest

from kontinual.controller.settings import Settings
from tests.serving.conftest import jpeg
from tests.serving.server import DeepSparseServer
from tests.serving.test_class_names import soccer_example
from tests.support.roboflow_double import RoboflowDouble
from tests.support.sparsezoo_double import SparseZooDouble
from tests.support.zoo_models import coco_stand_in

pytestmark = pytest.mark.slow


def test_a_zoo_stub_is_served_from_the_configured_sparsezoo(tmp_path: Path) -> None:
    folder = coco_stand_in(tmp_path)
    with RoboflowDouble() as rf, SparseZooDouble() as zoo:
        cr = soccer_example(rf.url)
        stub = cr["spec"]["model"]["uri"]
        zoo.add_model(stub, folder)
        settings = Settings(roboflow_api_urls=(rf.url,), sparsezoo_api_url=zoo.url)
        with DeepSparseServer(cr, rf.api_key, tmp_path, settings=settings) as server:
            assert server.config["endpoints"][0]["model"] == stub  # DeepSparse resolves the stub itself
            assert server.pod_env["SPARSEZOO_API_URL"] == zoo.url  # from the rendered Deployment
            for i in range(3):
                response = server.infer(jpeg(320, 240, seed=300 + i))
                assert response.status_code == 200, response.text
                labels = response.json()["labels"][0]
                assert labels and set(labels) == {"sports ball"}, labels
        queries = zoo.graphql_queries()
        assert queries and '"pruned_quant-aggressive_94"' in queries[0], queries
        assert any(path.endswith("/deployment/model.onnx") for path in zoo.downloads()), zoo.downloads()
        cached = list((tmp_path / "home").rglob("model.onnx"))
        assert cached and cached[0].read_bytes() == (folder / "deployment" / "model.onnx").read_bytes()


def test_a_sparsezoo_that_is_down_keeps_the_server_from_starting_with_a_clear_log(tmp_path: Path) -> None:
    with RoboflowDouble() as rf, SparseZooDouble() as zoo:
        zoo.stop()
        cr = soccer_example(rf.url)
        server = DeepSparseServer(cr, rf.api_key, tmp_path, settings=Settings(roboflow_api_urls=(rf.url,),
                                                                               sparsezoo_api_url=zoo.url))
        with pytest.raises(RuntimeError, match="deepsparse.server exited") as failure:
            server.__enter__()
        server.stop()
    assert zoo.url.split("//")[1] in str(failure.value) or "Connection refused" in str(failure.value), \
        str(failure.value)[-2000:]
