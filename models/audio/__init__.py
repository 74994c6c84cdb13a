"""hysparse_kernels.models.audio: MiMo-Audio on the zoo's ops. An RVQ audio tokenizer, the patch
encoder / patch decoder with the delay pattern around a zoo backbone, generation, WAV and
checkpoint I/O.

Example::

    from hysparse_kernels.models.audio import AudioLM, AudioTokenizer, TokenizerConfig, get_audio_config
    tok = AudioTokenizer(TokenizerConfig())
    lm = AudioLM(get_audio_config("tiny-mimo-audio"))
"""

from .config import (BOS, EMPTY, EOS, EOSP, EOSTM, EOT, PAD, SOSP, SOSTM, TEXT_VOCAB, AudioLMConfig, TokenizerConfig,
                     decode_text, encode_text, get_audio_config, list_audio_models)
from .lm import AudioLM, build_audio_lm, pack, param_count, unpack
from .patch import delay_grid, delay_mask, undelay_grid
from .tokenizer import AudioTokenizer

__all__ = ["AudioLM", "AudioLMConfig", "AudioTokenizer", "TokenizerConfig", "build_audio_lm", "get_audio_config",
           "list_audio_models", "pack", "unpack", "param_count", "delay_grid", "delay_mask", "undelay_grid",
           "encode_text", "decode_text", "BOS", "EOS", "PAD", "SOSP", "EOSP", "EMPTY", "SOSTM", "EOSTM", "EOT", "TEXT_VOCAB"]
