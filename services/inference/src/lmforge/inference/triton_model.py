# The Triton python-backend model every lmforge model version is served with. This file is copied
# into <repository>/<triton model>/1/model.py next to the Hugging Face weights in 1/weights/.
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import AutoModelForCausalLM, AutoTokenizer


class TritonPythonModel:
    def initialize(self, args):
        weights = os.path.join(args["model_repository"], args["model_version"], "weights")
        gpu = args.get("model_instance_kind") == "GPU" and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(weights)
        self.model = AutoModelForCausalLM.from_pretrained(weights).to(self.device).eval()  # type: ignore[arg-type]
        self.max_positions = getattr(self.model.config, "n_positions", None) or getattr(
            self.model.config, "max_position_embeddings", 1024
        )

    def _generate(self, prompt, max_new_tokens, temperature):
        enc = self.tokenizer(prompt, return_tensors="pt")
        ids = enc["input_ids"][:, -max(1, self.max_positions - max_new_tokens) :].to(self.device)
        mask = torch.ones_like(ids)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        new = out[0][ids.shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True), int(ids.shape[1]), int(new.shape[0])

    def execute(self, requests):
        responses = []
        for request in requests:
            prompts = pb_utils.get_input_tensor_by_name(request, "PROMPT").as_numpy()
            max_tokens = pb_utils.get_input_tensor_by_name(request, "MAX_TOKENS").as_numpy()
            temperatures = pb_utils.get_input_tensor_by_name(request, "TEMPERATURE").as_numpy()
            texts, prompt_tokens, completion_tokens = [], [], []
            try:
                for i in range(prompts.shape[0]):
                    raw = prompts[i][0]
                    prompt = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
                    text, n_in, n_out = self._generate(prompt, int(max_tokens[i][0]), float(temperatures[i][0]))
                    texts.append([text.encode("utf-8")])
                    prompt_tokens.append([n_in])
                    completion_tokens.append([n_out])
            except Exception as exc:  # noqa: BLE001 - report per request; the model instance stays up
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"generation failed: {exc}")))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("TEXT", np.array(texts, dtype=np.object_)),
                        pb_utils.Tensor("PROMPT_TOKENS", np.array(prompt_tokens, dtype=np.int32)),
                        pb_utils.Tensor("COMPLETION_TOKENS", np.array(completion_tokens, dtype=np.int32)),
                    ]
                )
            )
        return responses
