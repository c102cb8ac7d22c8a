// Kernel parameters of fused disentangled attention: plain structs shared by the host code (attention.cpp,
// compiled against torch) and the kernels (compiled without torch headers, which keeps nvcc fast).
#pragma once

#include <cstdint>

namespace deberta_fast {

enum class ElemType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2 };

// Inputs every kernel reads. Tensors [B, H, N, D] have arbitrary (16-byte aligned) batch / head / row strides
// in elements and a unit last-dim stride. B, the pointers and bh0 describe one slice of the batch.
struct AttnParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t q_stride_b = 0, q_stride_h = 0, q_stride_n = 0;
  int64_t k_stride_b = 0, k_stride_h = 0, k_stride_n = 0;
  int64_t v_stride_b = 0, v_stride_h = 0, v_stride_n = 0;

  // C2P = Q pos_key^T and P2C = K pos_query^T, contiguous [B, H, N, 2S] in the input dtype, or null.
  const void* c2p = nullptr;
  const void* p2c = nullptr;
  int two_s = 1;
  // The relative-position index over distances: table[i - j + N - 1] = d(i, j), int32 [2N - 1].
  const int32_t* table = nullptr;
  // Pairs with i - j >= r_hi use row 2S - 1, pairs with i - j <= -r_lo row 0 (both <= N).
  int r_hi = 0, r_lo = 0;

  // Key padding mask, bool [B, N] (1 = token), or null.
  const uint8_t* mask = nullptr;
  int64_t mask_stride_b = 0, mask_stride_n = 0;
  bool masked_zero = false;  // fully padded query rows output 0 (else attend uniformly to all N keys)

  // Dropout: [seed, offset] int64 on the device, or null (no dropout).
  const int64_t* philox = nullptr;
  float dropout_p = 0.f;

  int B = 0, H = 0, N = 0;
  int bh0 = 0;  // batch * H + head of this slice's first sequence (dropout counts over the whole batch)
  float scale = 1.f;       // score scale
  float scale_log2 = 1.f;  // scale * log2(e): the kernels work in base 2
  // Band tiles read C2P / P2C from slabs staged in shared memory (score_terms.h, DEBERTA_FAST_CUDA_BAND=staged)
  // instead of gathering them from global memory; set only where the slabs apply (attention.cpp).
  bool staged = false;
};

struct FwdParams : AttnParams {
  void* out = nullptr;  // [B, H, N, D] in the input dtype
  int64_t o_stride_b = 0, o_stride_h = 0, o_stride_n = 0;
  float* lse = nullptr;  // [B, H, N] contiguous, natural log; +inf on fully padded rows under masked_zero
};

struct BwdParams : AttnParams {
  const void* dout = nullptr;
  int64_t do_stride_b = 0, do_stride_h = 0, do_stride_n = 0;
  const float* lse = nullptr;    // [B, H, N]
  const float* delta = nullptr;  // [B, H, N]: rowsum(dO * O)

  void* dq = nullptr;  // [B, H, N, D]: float32 when dq_f32 (a band term is added afterwards), else the input dtype
  int64_t dq_stride_b = 0, dq_stride_h = 0, dq_stride_n = 0;
  bool dq_f32 = false;
  void* dk = nullptr;
  int64_t dk_stride_b = 0, dk_stride_h = 0, dk_stride_n = 0;
  bool dk_f32 = false;
  void* dv = nullptr;
  int64_t dv_stride_b = 0, dv_stride_h = 0, dv_stride_n = 0;

  // Position tables [H, 2S, D] (any strides, unit last dim): their end rows take the saturated pairs' gradient.
  const void* pos_key = nullptr;
  int64_t pk_stride_h = 0, pk_stride_n = 0;
  const void* pos_query = nullptr;
  int64_t pq_stride_h = 0, pq_stride_n = 0;

  // dS stored by distance for the band pairs, in the input dtype, [H, B, N, band_w] (slot i - j + r_lo - 1; rows
  // padded from the band width W to band_w, a multiple of 8), or null.
  void* band_q = nullptr;  // c2p: rows are queries
  void* band_k = nullptr;  // p2c: rows are keys
  int band_w = 0;
  // dS summed over the saturated pairs, float32 [2, B, H, N]: [0] row 0 of the table, [1] row 2S - 1.
  float* sat_q = nullptr;
  float* sat_k = nullptr;
};

struct DeltaParams {
  const void* out = nullptr;
  int64_t o_stride_b = 0, o_stride_h = 0, o_stride_n = 0;
  const void* dout = nullptr;
  int64_t do_stride_b = 0, do_stride_h = 0, do_stride_n = 0;
  float* delta = nullptr;  // [B, H, N]
  int B = 0, H = 0, N = 0, D = 0;
};

}  // namespace deberta_fast
