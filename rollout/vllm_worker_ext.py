"""Methods mixed into each vLLM worker process (`worker_extension_cls`), reached by `collective_rpc`.

Why a mixin and not `model.load_weights`: vLLM-CPU repacks linear weights for oneDNN at load time, so a
plain `load_weights` leaves the packed copies stale. `reload_weights` re-runs the loader's post-processing;
tied embeddings then need the lm_head re-packed by hand (it shares the embedding tensor, which the reload
replaced), or logits stay 0.5-2 nats off. Tensors do not survive `collective_rpc` in the multi-process
engine, so the learner hands over a safetensors folder path (in /dev/shm on one machine).
"""

from __future__ import annotations


class TemperWorkerExtension:
    def temper_reload_weights(self, weights_dir: str) -> None:
        self.model_runner.reload_weights(weights_path=weights_dir)
        model = self.model_runner.get_model()
        lm_head = getattr(model, "lm_head", None)
        tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
        quant = getattr(lm_head, "quant_method", None)
        if tied and quant is not None and hasattr(quant, "process_weights_after_loading"):
            quant.process_weights_after_loading(lm_head)
