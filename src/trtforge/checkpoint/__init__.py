"""Know a checkpoint before building it: read its configs and safetensors headers, never its weights.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming every tensor's
dtype, shape and byte range, so a 20 GB checkpoint is described by a few hundred kilobytes read from disk (or by
HTTP range requests for a hub id, through `huggingface_hub.get_safetensors_metadata`).

What a ModelOpt NVFP4 export looks like:

    <checkpoint>/
        config.json                    architecture, dimensions, maybe `quantization_config`
        hf_quant_config.json           {"quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": "FP8", ...}}
        model.safetensors.index.json   tensor name → shard file
        model-0000X-of-0000N.safetensors
    per quantized Linear: weight U8 [N, K/2], weight_scale F8_E4M3 [N, K/16], weight_scale_2 F32 [], input_scale F32 []

Modules: `model` (`CheckpointInfo` and its parts), `headers` (safetensors headers), `locate`
(`inspect_checkpoint`: a local directory or a hub id at a revision → `CheckpointInfo`), `validate`
(`check_checkpoint` lists what would build into a broken engine and `validate_checkpoint` raises the first of those
as one `CheckpointError` line naming the tensor or file). Import from the module that defines a name; this
package re-exports nothing.
"""
