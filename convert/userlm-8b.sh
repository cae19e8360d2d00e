#!/usr/bin/env bash
# Turn a local download of microsoft/UserLM-8b into the published GGUF set:
#   BF16, Q8_0, Q6_K, Q5_K_M (plain) and Q4_K_M, IQ4_XS (with an importance matrix).
# Nothing is downloaded: SRC is a directory you fetched yourself, e.g.
#   huggingface-cli download microsoft/UserLM-8b --local-dir ~/models/UserLM-8b
#
# usage: convert/userlm-8b.sh SRC [OUT]      (OUT defaults to dist/UserLM-8b-GGUF)
# env:   THREADS=N (default: all cores)  LOGIT_CHECK=on|off  CALIBRATION=auto|train|builtin
set -euo pipefail

SRC=${1:?usage: $0 /path/to/UserLM-8b [out-dir]}
OUT=${2:-dist/UserLM-8b-GGUF}
NAME=UserLM-8b
THREADS=${THREADS:-$(nproc)}
CALIBRATION=${CALIBRATION:-auto}

# The conversion-time logit check runs the checkpoint in torch float32 one decoder layer at
# a time (~4 GiB for 8B, whatever the machine), so it is on by default.  LOGIT_CHECK=off
# skips it (it adds a few minutes per float file on a laptop CPU); the other checks
# (metadata, load + decode, tokenization parity) always run.
case ${LOGIT_CHECK:-on} in
  off) logit=(--no-logit-check) ;;
  *) logit=() ;;
esac

# 0. Is it the model we expect?  (UserLM tokens, template, EOS disagreement, rope)
userlm-local info "$SRC"

# 1. BF16 (the source is float32: BF16 halves it and is what llama.cpp quantizes from),
#    then the plain k-quants, each made from that BF16 file by llama_model_quantize.
userlm-local convert "$SRC" --to gguf --name "$NAME" --out "$OUT" --threads "$THREADS" \
  --quant bf16,q8_0,q6_k,q5_k_m ${logit[@]+"${logit[@]}"}

# 2. The 4-bit types with an importance matrix: mean x² per input column of every linear
#    layer, measured by running the model (torch float32, one decoder layer at a time: a
#    few GiB) over conversations rendered in the UserLM prompt format (training split of
#    userlm_local.data when installed, else the built-in set).  Quantized from the BF16 file
#    of step 1 (reused after its checksum is verified); the matrix is kept as imatrix.gguf
#    (llama.cpp format).
userlm-local convert "$SRC" --to gguf --name "$NAME" --out "$OUT" --threads "$THREADS" \
  --quant q4_k_m,iq4_xs --imatrix --calibration "$CALIBRATION" \
  --calibration-conversations 128 --calibration-tokens 512

echo "done: $OUT (see $OUT/manifest.json)"
