// Entry points of the CUDA kernels, callable from host code compiled without nvcc (attention.cpp), and the
// compile-time switches that dispatch a call to the instantiation for its dtype and head dim.
//
// run_fwd / run_dkdv / run_dq are specialised once per (dtype, head dim) in csrc/generated/*.cu, written by
// csrc/generate_instantiations.py (never by hand). Everything else about a call (position terms, masks,
// masked_rows, dropout) is a runtime flag in the parameters: warp-uniform branches that cost little, and a
// build that stays small.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "params.h"

#define DF_CUDA_CHECK(expr)                                                                                    \
  do {                                                                                                        \
    const cudaError_t df_err_ = (expr);                                                                       \
    if (df_err_ != cudaSuccess) {                                                                             \
      throw std::runtime_error(std::string("deberta_fast CUDA error: ") + cudaGetErrorString(df_err_) + " (" + \
                               #expr + " at " + __FILE__ + ":" + std::to_string(__LINE__) + ")");            \
    }                                                                                                         \
  } while (0)

namespace deberta_fast {

// Head dims with kernels; others are rejected with a message by the host code.
constexpr int kHeadDims[] = {32, 64, 128};

template <ElemType E, int D>
void run_fwd(const FwdParams& params, cudaStream_t stream);
template <ElemType E, int D>
void run_fwd_128x32(const FwdParams& params, cudaStream_t stream);  // opt-in tiles, float16 / bfloat16 only
template <ElemType E, int D>
void run_fwd_64x64(const FwdParams& params, cudaStream_t stream);  // opt-in tiles, float16 / bfloat16 only
template <ElemType E, int D>
void run_fwd_wgmma(const FwdParams& params, cudaStream_t stream);  // opt-in wgmma, float16 / bfloat16, D 64 only
template <ElemType E, int D>
void run_dkdv(const BwdParams& params, cudaStream_t stream);
template <ElemType E, int D>
void run_dq(const BwdParams& params, cudaStream_t stream);
template <ElemType E, int D>
void run_dkdv_wgmma(const BwdParams& params, cudaStream_t stream);  // opt-in wgmma, float16 / bfloat16, D 64 only
template <ElemType E, int D>
void run_dq_wgmma(const BwdParams& params, cudaStream_t stream);  // opt-in wgmma, float16 / bfloat16, D 64 only

void run_delta(ElemType elem, const DeltaParams& params, cudaStream_t stream);
// Zero the slots of a band buffer [seqs, n, stride] (element size elem_bytes) that no (query, key) pair writes:
// columns >= width and distances whose other index falls outside [0, n). rows_are_queries: band_q, else band_k.
void run_band_edges(void* band, int elem_bytes, int64_t seqs, int n, int width, int stride, int r_lo,
                    bool rows_are_queries, cudaStream_t stream);
// keep[bh, i, j] (uint8 [B * H, N, N]) of the dropout mask for philox = [seed, offset] on the device.
void run_dropout_mask(const int64_t* philox, float p, int bh_count, int n, uint8_t* keep, cudaStream_t stream);
// Whether the kernels that run on ``device`` were compiled with wgmma (an sm_90a build on an sm_90 GPU): one tiny
// kernel's answer, probed once per device (it synchronizes, that once).
bool wgmma_kernels_loaded(int device);
// Test hook: out [64, 64] (float) = a b^T (rn false) or a b (rn true) for a, b [64, 64] (float16 / bfloat16,
// contiguous) by the kernels' wgmma products (wgmma.cuh); needs wgmma_kernels_loaded.
void run_wgmma_probe(ElemType elem, const void* a, const void* b, float* out, bool rn, cudaStream_t stream);

}  // namespace deberta_fast

// BOOL_SWITCH-style helpers: run the body with a constexpr ELEM / HEAD_DIM.
#define DF_ELEM_SWITCH(elem, ELEM, ...)                                    \
  [&] {                                                                    \
    switch (elem) {                                                        \
      case ::deberta_fast::ElemType::kFloat16: {                           \
        constexpr auto ELEM = ::deberta_fast::ElemType::kFloat16;          \
        return __VA_ARGS__();                                              \
      }                                                                    \
      case ::deberta_fast::ElemType::kBFloat16: {                          \
        constexpr auto ELEM = ::deberta_fast::ElemType::kBFloat16;         \
        return __VA_ARGS__();                                              \
      }                                                                    \
      default: {                                                           \
        constexpr auto ELEM = ::deberta_fast::ElemType::kFloat32;          \
        return __VA_ARGS__();                                              \
      }                                                                    \
    }                                                                      \
  }()

#define DF_HEADDIM_SWITCH(head_dim, HEAD_DIM, ...)                         \
  [&] {                                                                    \
    if (head_dim == 32) {                                                  \
      constexpr int HEAD_DIM = 32;                                         \
      return __VA_ARGS__();                                                \
    } else if (head_dim == 64) {                                           \
      constexpr int HEAD_DIM = 64;                                         \
      return __VA_ARGS__();                                                \
    } else {                                                               \
      constexpr int HEAD_DIM = 128;                                        \
      return __VA_ARGS__();                                                \
    }                                                                      \
  }()
