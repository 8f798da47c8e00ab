"""The Triton fixture: a real tritonserver (CPU, python backend, explicit model control)."""

from __future__ import annotations

import textwrap

import numpy as np
import tritonclient.http as triton_http

from lmforge.devstack.servers import TritonServer

CONFIG = """
name: "add_one"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 1000 }
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""

MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""


def test_triton_loads_infers_and_unloads_a_python_model(triton: TritonServer) -> None:
    model_dir = triton.model_repository / "add_one"
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(textwrap.dedent(CONFIG))
    (model_dir / "1" / "model.py").write_text(textwrap.dedent(MODEL))

    client = triton_http.InferenceServerClient(triton.http_url)
    assert client.is_server_ready()
    assert not client.is_model_ready("add_one")  # explicit mode: nothing is loaded on its own

    client.load_model("add_one")
    assert client.is_model_ready("add_one")
    batch = np.arange(8, dtype=np.float32).reshape(2, 4)
    inp = triton_http.InferInput("INPUT0", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch)
    result = client.infer("add_one", [inp], outputs=[triton_http.InferRequestedOutput("OUTPUT0")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), batch + 1)

    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["add_one"]["state"] == "READY"
    client.unload_model("add_one")
    assert not client.is_model_ready("add_one")
    client.close()
