// Backward of fused disentangled attention.
//
// 1. delta_kernel: Delta_i = rowsum(dO_i * O_i) in fp32.
// 2. attention_dkdv_kernel: a CTA owns BR keys and streams query tiles. It recomputes S^T = K Q^T (+ position
//    terms, masks), P^T from the stored LSE and the regenerated dropout mask, and accumulates
//    dV += P~^T dO and dK += dS^T Q. The p2c part of dS is reduced per key and position slot in the kernel:
//    saturated pairs (rows 0 / 2S - 1 of pos_query) as two sums per key, added to dK with the two table
//    rows and stored for dpos_query; band pairs stored at their distance, band_k[j, i - j + r_lo - 1].
// 3. attention_dq_kernel: a CTA owns BR queries and streams key tiles: dQ += dS K, and the c2p part of dS
//    (saturated sums per query, band_q[i, i - j + r_lo - 1]).
// The host turns the band buffers into dQ / dK / dpos terms with GEMMs (attention.cpp).
// The position terms and the slot sums by score_terms.h (the tile kind dispatched once per tile, a band tile's
// loads issued together).
#pragma once

#include "attention_common.cuh"
#include "kernel_traits.h"
#include "wgmma.cuh"

namespace deberta_fast {

// ------------------------------------------------------------------------------------------------------
// Delta.

template <typename T>
__global__ void delta_kernel(const DeltaParams p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= static_cast<int64_t>(p.B) * p.H * p.N) return;
  const int n = static_cast<int>(row % p.N);
  const int bh = static_cast<int>(row / p.N);
  const int b = bh / p.H, h = bh % p.H;
  const T* o = static_cast<const T*>(p.out) + b * p.o_stride_b + h * p.o_stride_h + n * p.o_stride_n;
  const T* d = static_cast<const T*>(p.dout) + b * p.do_stride_b + h * p.do_stride_h + n * p.do_stride_n;
  constexpr int kVec = 16 / sizeof(T);
  float sum = 0.f;
  for (int c = 0; c < p.D; c += kVec) {
    const uint4 ov = *reinterpret_cast<const uint4*>(o + c);
    const uint4 dv = *reinterpret_cast<const uint4*>(d + c);
    const T* oe = reinterpret_cast<const T*>(&ov);
    const T* de = reinterpret_cast<const T*>(&dv);
#pragma unroll
    for (int e = 0; e < kVec; ++e) sum += to_float(oe[e]) * to_float(de[e]);
  }
  p.delta[row] = sum;
}

template <typename T>
void launch_delta_kernel(const DeltaParams& p, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.N;
  constexpr int kThreads = 128;
  delta_kernel<T><<<static_cast<unsigned>((rows + kThreads - 1) / kThreads), kThreads, 0, stream>>>(p);
  DF_CUDA_CHECK(cudaGetLastError());
}

// ------------------------------------------------------------------------------------------------------
// Position-slot bookkeeping of dS for the term whose content side is the accumulator rows: the saturated sums of
// each row (score_terms.h's add_slot_sums adds a tile's to them; band pairs go to the band buffer there).

template <int MF, int NF>
struct SlotSums {
  float hi[MF][2], lo[MF][2];

  __device__ void init() {
#pragma unroll
    for (int mf = 0; mf < MF; ++mf)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) hi[mf][hh] = lo[mf][hh] = 0.f;
  }
};

// Store one accumulator row pair (columns 2t, 2t + 1 of each 8-block) of a [*, D] gradient, scaled, plus
// scale * (s_hi * pos[2S - 1] + s_lo * pos[0]) when pos is given.
template <typename T, typename Out, int DF>
__device__ __forceinline__ void store_grad_row(Out* dst, const float (&acc)[DF][4], int hh, float scale,
                                               const T* pos_hi, const T* pos_lo, float s_hi, float s_lo) {
  const int t = threadIdx.x % 4;
#pragma unroll
  for (int df = 0; df < DF; ++df) {
    const int col = df * 8 + 2 * t;
    float a = acc[df][2 * hh] * scale;
    float b = acc[df][2 * hh + 1] * scale;
    if (pos_hi != nullptr) {
      a += scale * (s_hi * to_float(pos_hi[col]) + s_lo * to_float(pos_lo[col]));
      b += scale * (s_hi * to_float(pos_hi[col + 1]) + s_lo * to_float(pos_lo[col + 1]));
    }
    store_pair(dst + col, a, b);
  }
}

// ------------------------------------------------------------------------------------------------------
// dK, dV over key tiles (accumulator rows are keys, columns queries).

// kStaged: p.staged, band tiles read C2P / P2C from slabs staged in shared memory (StagedSlabs, as the forward's).
template <typename Kt, bool kStaged>
__global__ void __launch_bounds__(Kt::kThreads) attention_dkdv_kernel(const BwdParams p) {
  using T = typename Kt::T;
  constexpr int D = Kt::D, BR = Kt::BR, BC = Kt::BC, MF = Kt::MF, NF = Kt::NF, DF = Kt::DF;
  constexpr int kThreads = Kt::kThreads;
  constexpr bool kWgmma = Kt::kWgmma && kWgmmaCompiled;  // else this instantiation runs mma.sync
  using Gemm = KernelGemm<T, D, kWgmma>;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sK = reinterpret_cast<T*>(smem_raw);  // [BR][D]
  T* sV = sK + BR * D;                     // [BR][D]
  T* sQ = sV + BR * D;                     // [2][BC][D]
  T* sdO = sQ + 2 * BC * D;                // [2][BC][D]
  float* sLse = reinterpret_cast<float*>(sdO + 2 * BC * D);  // [2][BC]: LSE * log2(e), +inf beyond N
  float* sDelta = sLse + 2 * BC;                             // [2][BC]
  float* sCol = sDelta + 2 * BC;                             // [2][BC]: c2p term of the tile's kind
  float* sPad = sCol + 2 * BC;                               // [2][BC]: 1 on padded queries
  StagedSlabs<T, BC, BR, kThreads> slabs(sPad + 2 * BC);     // kStaged: tiles of BC queries and the BR keys

  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z;
  const int bh = b * p.H + h;
  const int N = p.N;
  const int j0 = blockIdx.x * BR;
  const int warp_row0 = warp * 16 * MF;
  if constexpr (kWgmma) {
    if ((smem_u32(smem_raw) & 1023u) != 0) __trap();  // the descriptors' swizzle needs 1024-byte aligned tiles
  }

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  const T* dout = static_cast<const T*>(p.dout) + b * p.do_stride_b + h * p.do_stride_h;
  const float* lse = p.lse + static_cast<int64_t>(bh) * N;
  const float* delta = p.delta + static_cast<int64_t>(bh) * N;
  const int64_t pos_offset = (static_cast<int64_t>(h) * p.B + b) * N * p.two_s;  // C2P / P2C are [H, B, N, 2S]
  const T* c2p = p.c2p != nullptr ? static_cast<const T*>(p.c2p) + pos_offset : nullptr;
  const T* p2c = p.p2c != nullptr ? static_cast<const T*>(p.p2c) + pos_offset : nullptr;
  const bool has_c2p = c2p != nullptr, has_p2c = p2c != nullptr;
  const bool has_pos = has_c2p || has_p2c;
  const bool has_mask = p.mask != nullptr;
  const bool has_dropout = p.philox != nullptr;
  const float fill = p.masked_zero ? -INFINITY : 0.f;
  T* band = p.band_k != nullptr ? static_cast<T*>(p.band_k) + (static_cast<int64_t>(h) * p.B + b) * N * p.band_w : nullptr;

  float p2c_hi[MF][2], p2c_lo[MF][2];
  bool key_ok[MF][2], key_in[MF][2];
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int kj = j0 + warp_row0 + mf * 16 + g + 8 * hh;
      p2c_hi[mf][hh] = sat_value(p2c, p.two_s, kj, N, true);
      p2c_lo[mf][hh] = sat_value(p2c, p.two_s, kj, N, false);
      key_ok[mf][hh] = is_token(p, b, kj);
      key_in[mf][hh] = kj < N;
    }
  }
  float dk[MF][DF][4], dv[MF][DF][4];
  zero(dk);
  zero(dv);
  SlotSums<MF, NF> slots;
  slots.init();

  const int n_tiles = (N + BC - 1) / BC;
  // Query tiles: Q and dO by cp.async; each query's LSE, Delta, c2p term of the tile's kind and padding flag
  // through registers fetched a tile ahead (ColumnFetch), one query per thread.
  static_assert(BC <= kThreads, "one query column per thread");
  ColumnFetch<T> next;
  auto fetch_queries = [&](int it) {
    const int qi = it * BC + threadIdx.x;
    next.fetch(p, b, c2p, qi, it < n_tiles && threadIdx.x < BC, tile_mode(p, has_pos, it * BC, BC, j0, BR));
    next.fetch_rows(lse, delta, qi);
  };
  auto staged_tile = [&](int it) {  // kStaged: query tile it as StagedSlabs sees it
    return StagedTile{it < n_tiles && tile_mode(p, has_pos, it * BC, BC, j0, BR) == kBand, it * BC, j0};
  };
  auto load_tile = [&](int it) {
    const int buf = it & 1;
    const int i0 = it * BC;
    load_tile_async<T, BC, D, kThreads>(sQ + buf * BC * D, q, p.q_stride_n, i0, N);
    load_tile_async<T, BC, D, kThreads>(sdO + buf * BC * D, dout, p.do_stride_n, i0, N);
    if constexpr (kStaged) slabs.stage(p, staged_tile, it, c2p, p2c);
    if (threadIdx.x < BC) {
      const int c = buf * BC + threadIdx.x;
      sLse[c] = next.in ? next.lse * kLog2e : INFINITY;
      sDelta[c] = next.in ? next.delta : 0.f;
      sCol[c] = next.pos_value();
      sPad[c] = (has_mask && next.in && !next.is_token()) ? 1.f : 0.f;
    }
    fetch_queries(it + 1);
  };

  load_tile_async<T, BR, D, kThreads>(sK, k, p.k_stride_n, j0, N);
  load_tile_async<T, BR, D, kThreads>(sV, v, p.v_stride_n, j0, N);
  fetch_queries(0);
  if constexpr (kStaged) slabs.prime(p, staged_tile);
  load_tile(0);
  cp_async_commit();

  const DropoutKey dkey = load_dropout_key(p);
  const float rescale = has_dropout ? 1.f / (1.f - p.dropout_p) : 1.f;
  const uint32_t bh_global = static_cast<uint32_t>(bh + p.bh0);

  for (int it = 0; it < n_tiles; ++it) {
    if (it + 1 < n_tiles) load_tile(it + 1);
    cp_async_commit();
    cp_async_wait<1>();
    if constexpr (kWgmma) fence_proxy_async();  // this thread's copies, before the tensor cores read them
    __syncthreads();

    const int buf = it & 1;
    const int i0 = it * BC;
    const T* sQb = sQ + buf * BC * D;
    const T* sdOb = sdO + buf * BC * D;
    const float* sLseb = sLse + buf * BC;
    const float* sDeltab = sDelta + buf * BC;
    const float* sColb = sCol + buf * BC;
    const float* sPadb = sPad + buf * BC;
    const int mode = tile_mode(p, has_pos, i0, BC, j0, BR);

    // P^T = exp2(S^T - LSE) with S^T = K Q^T + position terms, masked.
    float s[MF][NF][4];
    zero(s);
    Gemm::template nt<MF, NF>(s, sK, warp_row0, sQb);
    if (kStaged && mode == kBand) {
      slabs.template add_terms<true>(s, p, it, i0, j0, warp_row0, lane, sColb, has_c2p, has_p2c);
    } else {
      add_position_terms_any<true, !kStaged>(mode, s, p, c2p, p2c, j0 + warp_row0, i0, lane, sColb, p2c_hi, p2c_lo);
    }
#pragma unroll
    for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
      for (int nf = 0; nf < NF; ++nf) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hh = e >> 1;
          const int c = nf * 8 + 2 * t + (e & 1);
          float x = key_ok[mf][hh] ? s[mf][nf][e] * p.scale_log2 : -INFINITY;
          if (has_mask && sPadb[c] != 0.f) x = key_in[mf][hh] ? fill : -INFINITY;
          s[mf][nf][e] = exp2f(x - sLseb[c]);
        }
      }
    }

    // dP^T = V dO^T; dS^T = P^T (dP~^T - Delta), zero on masked pairs; P~ = dropout(P) for dV.
    float dp[MF][NF][4];
    zero(dp);
    Gemm::template nt<MF, NF>(dp, sV, warp_row0, sdOb);
    auto finish = [&](int mf, int nf, int e, bool keep) {
      const int hh = e >> 1;
      const int c = nf * 8 + 2 * t + (e & 1);
      const float pr = s[mf][nf][e];
      const float dpv = keep ? dp[mf][nf][e] * rescale : 0.f;
      float ds = pr * (dpv - sDeltab[c]);
      if (!key_ok[mf][hh] || sPadb[c] != 0.f) ds = 0.f;
      dp[mf][nf][e] = ds;
      s[mf][nf][e] = keep ? pr * rescale : 0.f;
    };
    if (has_dropout) {
      for_each_keep<true, MF, NF>(dkey, bh_global, j0 + warp_row0, i0, finish);
    } else {
#pragma unroll
      for (int mf = 0; mf < MF; ++mf)
#pragma unroll
        for (int nf = 0; nf < NF; ++nf)
#pragma unroll
          for (int e = 0; e < 4; ++e) finish(mf, nf, e, true);
    }

    Gemm::template rn<MF, NF>(dv, s, sdOb);
    Gemm::template rn<MF, NF>(dk, dp, sQb);
    if (p2c != nullptr && mode != kPlain) {
      add_slot_sums_any<true>(mode, slots.hi, slots.lo, p, dp, j0 + warp_row0, i0, lane, band, p.band_w);
    }
    if constexpr (kStaged) slabs.advance(p, staged_tile, it);
    __syncthreads();
  }

  // Epilogue: dK = scale (dS^T Q + saturated sums x pos_query rows), dV; the sums for dpos_query.
  const T* pq = p2c != nullptr ? static_cast<const T*>(p.pos_query) + h * p.pq_stride_h : nullptr;
  const T* pq_hi = pq != nullptr ? pq + static_cast<int64_t>(p.two_s - 1) * p.pq_stride_n : nullptr;
  const int64_t sat_stride = static_cast<int64_t>(p.B) * p.H * N;
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int kj = j0 + warp_row0 + mf * 16 + g + 8 * hh;
      const float s_hi = quad_sum(slots.hi[mf][hh]);
      const float s_lo = quad_sum(slots.lo[mf][hh]);
      if (kj >= N) continue;
      if (p.dk_f32) {
        float* dst = static_cast<float*>(p.dk) + b * p.dk_stride_b + h * p.dk_stride_h + kj * p.dk_stride_n;
        store_grad_row<T, float, DF>(dst, dk[mf], hh, p.scale, pq_hi, pq, s_hi, s_lo);
      } else {
        T* dst = static_cast<T*>(p.dk) + b * p.dk_stride_b + h * p.dk_stride_h + kj * p.dk_stride_n;
        store_grad_row<T, T, DF>(dst, dk[mf], hh, p.scale, pq_hi, pq, s_hi, s_lo);
      }
      T* dst_v = static_cast<T*>(p.dv) + b * p.dv_stride_b + h * p.dv_stride_h + kj * p.dv_stride_n;
      store_grad_row<T, T, DF>(dst_v, dv[mf], hh, 1.f, nullptr, nullptr, 0.f, 0.f);
      if (pq != nullptr && t == 0) {
        p.sat_k[static_cast<int64_t>(bh) * N + kj] = s_lo;
        p.sat_k[sat_stride + static_cast<int64_t>(bh) * N + kj] = s_hi;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------------
// dQ over query tiles (accumulator rows are queries, columns keys).

template <typename Kt, bool kStaged>  // kStaged: as attention_dkdv_kernel's
__global__ void __launch_bounds__(Kt::kThreads) attention_dq_kernel(const BwdParams p) {
  using T = typename Kt::T;
  constexpr int D = Kt::D, BR = Kt::BR, BC = Kt::BC, MF = Kt::MF, NF = Kt::NF, DF = Kt::DF;
  constexpr int kThreads = Kt::kThreads;
  constexpr bool kWgmma = Kt::kWgmma && kWgmmaCompiled;  // else this instantiation runs mma.sync
  using Gemm = KernelGemm<T, D, kWgmma>;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [BR][D]
  T* sdO = sQ + BR * D;                    // [BR][D]
  T* sK = sdO + BR * D;                    // [2][BC][D]
  T* sV = sK + 2 * BC * D;                 // [2][BC][D]
  float* sCol = reinterpret_cast<float*>(sV + 2 * BC * D);  // [2][BC]: p2c term of the tile's kind, -inf off keys
  StagedSlabs<T, BR, BC, kThreads> slabs(sCol + 2 * BC);     // kStaged: tiles of the BR queries and BC keys

  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z;
  const int bh = b * p.H + h;
  const int N = p.N;
  const int i0 = blockIdx.x * BR;
  const int warp_row0 = warp * 16 * MF;
  if constexpr (kWgmma) {
    if ((smem_u32(smem_raw) & 1023u) != 0) __trap();  // the descriptors' swizzle needs 1024-byte aligned tiles
  }

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  const T* dout = static_cast<const T*>(p.dout) + b * p.do_stride_b + h * p.do_stride_h;
  const int64_t pos_offset = (static_cast<int64_t>(h) * p.B + b) * N * p.two_s;  // C2P / P2C are [H, B, N, 2S]
  const T* c2p = p.c2p != nullptr ? static_cast<const T*>(p.c2p) + pos_offset : nullptr;
  const T* p2c = p.p2c != nullptr ? static_cast<const T*>(p.p2c) + pos_offset : nullptr;
  const bool has_c2p = c2p != nullptr, has_p2c = p2c != nullptr;
  const bool has_pos = has_c2p || has_p2c;
  const bool has_mask = p.mask != nullptr;
  const bool has_dropout = p.philox != nullptr;
  const float fill = p.masked_zero ? -INFINITY : 0.f;
  T* band = p.band_q != nullptr ? static_cast<T*>(p.band_q) + (static_cast<int64_t>(h) * p.B + b) * N * p.band_w : nullptr;

  float c2p_hi[MF][2], c2p_lo[MF][2], lse2[MF][2], delta[MF][2];
  bool row_pad[MF][2];
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int qi = i0 + warp_row0 + mf * 16 + g + 8 * hh;
      const bool in = qi < N;
      c2p_hi[mf][hh] = sat_value(c2p, p.two_s, qi, N, true);
      c2p_lo[mf][hh] = sat_value(c2p, p.two_s, qi, N, false);
      lse2[mf][hh] = in ? p.lse[static_cast<int64_t>(bh) * N + qi] * kLog2e : INFINITY;
      delta[mf][hh] = in ? p.delta[static_cast<int64_t>(bh) * N + qi] : 0.f;
      row_pad[mf][hh] = has_mask && in && !is_token(p, b, qi);
    }
  }
  float dq[MF][DF][4];
  zero(dq);
  SlotSums<MF, NF> slots;
  slots.init();

  const int n_tiles = (N + BC - 1) / BC;
  // Key tiles: K and V by cp.async; each key's column term (as the forward's) through registers fetched a
  // tile ahead (ColumnFetch), one key per thread.
  static_assert(BC <= kThreads, "one key column per thread");
  ColumnFetch<T> next;
  auto fetch_keys = [&](int jt) {
    next.fetch(p, b, p2c, jt * BC + threadIdx.x, jt < n_tiles && threadIdx.x < BC,
               tile_mode(p, has_pos, i0, BR, jt * BC, BC));
  };
  auto staged_tile = [&](int jt) {  // kStaged: key tile jt as StagedSlabs sees it
    return StagedTile{jt < n_tiles && tile_mode(p, has_pos, i0, BR, jt * BC, BC) == kBand, i0, jt * BC};
  };
  auto load_tile = [&](int jt) {
    const int buf = jt & 1;
    const int j0 = jt * BC;
    load_tile_async<T, BC, D, kThreads>(sK + buf * BC * D, k, p.k_stride_n, j0, N);
    load_tile_async<T, BC, D, kThreads>(sV + buf * BC * D, v, p.v_stride_n, j0, N);
    if constexpr (kStaged) slabs.stage(p, staged_tile, jt, c2p, p2c);
    if (threadIdx.x < BC) sCol[buf * BC + threadIdx.x] = next.key_term();
    fetch_keys(jt + 1);
  };

  load_tile_async<T, BR, D, kThreads>(sQ, q, p.q_stride_n, i0, N);
  load_tile_async<T, BR, D, kThreads>(sdO, dout, p.do_stride_n, i0, N);
  fetch_keys(0);
  if constexpr (kStaged) slabs.prime(p, staged_tile);
  load_tile(0);
  cp_async_commit();

  const DropoutKey dkey = load_dropout_key(p);
  const float rescale = has_dropout ? 1.f / (1.f - p.dropout_p) : 1.f;
  const uint32_t bh_global = static_cast<uint32_t>(bh + p.bh0);

  for (int jt = 0; jt < n_tiles; ++jt) {
    if (jt + 1 < n_tiles) load_tile(jt + 1);
    cp_async_commit();
    cp_async_wait<1>();
    if constexpr (kWgmma) fence_proxy_async();  // this thread's copies, before the tensor cores read them
    __syncthreads();

    const int buf = jt & 1;
    const int j0 = jt * BC;
    const T* sKb = sK + buf * BC * D;
    const T* sVb = sV + buf * BC * D;
    const float* sColb = sCol + buf * BC;
    const int mode = tile_mode(p, has_pos, i0, BR, j0, BC);

    float s[MF][NF][4];
    zero(s);
    Gemm::template nt<MF, NF>(s, sQ, warp_row0, sKb);
    if (kStaged && mode == kBand) {
      slabs.template add_terms<false>(s, p, jt, i0, j0, warp_row0, lane, sColb, has_c2p, has_p2c);
    } else {
      add_position_terms_any<false, !kStaged>(mode, s, p, c2p, p2c, i0 + warp_row0, j0, lane, sColb, c2p_hi, c2p_lo);
    }
#pragma unroll
    for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
      for (int nf = 0; nf < NF; ++nf) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int hh = e >> 1;
          const int c = nf * 8 + 2 * t + (e & 1);
          const int kj = j0 + c;
          float x = s[mf][nf][e] * p.scale_log2;
          if (has_mask && row_pad[mf][hh]) x = kj < N ? fill : -INFINITY;
          s[mf][nf][e] = exp2f(x - lse2[mf][hh]);
        }
      }
    }

    float dp[MF][NF][4];
    zero(dp);
    Gemm::template nt<MF, NF>(dp, sdO, warp_row0, sVb);
    auto finish = [&](int mf, int nf, int e, bool keep) {
      const int hh = e >> 1;
      const int c = nf * 8 + 2 * t + (e & 1);
      const float dpv = keep ? dp[mf][nf][e] * rescale : 0.f;
      float ds = s[mf][nf][e] * (dpv - delta[mf][hh]);
      if (row_pad[mf][hh] || sColb[c] == -INFINITY) ds = 0.f;
      dp[mf][nf][e] = ds;
    };
    if (has_dropout) {
      for_each_keep<false, MF, NF>(dkey, bh_global, i0 + warp_row0, j0, finish);
    } else {
#pragma unroll
      for (int mf = 0; mf < MF; ++mf)
#pragma unroll
        for (int nf = 0; nf < NF; ++nf)
#pragma unroll
          for (int e = 0; e < 4; ++e) finish(mf, nf, e, true);
    }

    Gemm::template rn<MF, NF>(dq, dp, sKb);
    if (c2p != nullptr && mode != kPlain) {
      add_slot_sums_any<false>(mode, slots.hi, slots.lo, p, dp, i0 + warp_row0, j0, lane, band, p.band_w);
    }
    if constexpr (kStaged) slabs.advance(p, staged_tile, jt);
    __syncthreads();
  }

  const T* pk = c2p != nullptr ? static_cast<const T*>(p.pos_key) + h * p.pk_stride_h : nullptr;
  const T* pk_hi = pk != nullptr ? pk + static_cast<int64_t>(p.two_s - 1) * p.pk_stride_n : nullptr;
  const int64_t sat_stride = static_cast<int64_t>(p.B) * p.H * N;
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int qi = i0 + warp_row0 + mf * 16 + g + 8 * hh;
      const float s_hi = quad_sum(slots.hi[mf][hh]);
      const float s_lo = quad_sum(slots.lo[mf][hh]);
      if (qi >= N) continue;
      if (p.dq_f32) {
        float* dst = static_cast<float*>(p.dq) + b * p.dq_stride_b + h * p.dq_stride_h + qi * p.dq_stride_n;
        store_grad_row<T, float, DF>(dst, dq[mf], hh, p.scale, pk_hi, pk, s_hi, s_lo);
      } else {
        T* dst = static_cast<T*>(p.dq) + b * p.dq_stride_b + h * p.dq_stride_h + qi * p.dq_stride_n;
        store_grad_row<T, T, DF>(dst, dq[mf], hh, p.scale, pk_hi, pk, s_hi, s_lo);
      }
      if (pk != nullptr && t == 0) {
        p.sat_q[static_cast<int64_t>(bh) * N + qi] = s_lo;
        p.sat_q[sat_stride + static_cast<int64_t>(bh) * N + qi] = s_hi;
      }
    }
  }
}

template <typename Kernel>
void launch_bwd(Kernel kernel, int smem, dim3 grid, int threads, const BwdParams& p, cudaStream_t stream) {
  if (smem > 48 * 1024) {
    DF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  }
  kernel<<<grid, threads, smem, stream>>>(p);
  DF_CUDA_CHECK(cudaGetLastError());
}

// Both backward kernels stage band slabs of tiles of BR x BC pairs (StagedSlabs' bytes the same either way round).
template <typename Kt>
constexpr int bwd_staged_smem() {
  return Kt::kSmemBytes + StagedSlabs<typename Kt::T, Kt::BR, Kt::BC, Kt::kThreads>::kBytes;
}

template <typename Kt>
void launch_dkdv_kernel(const BwdParams& p, cudaStream_t stream) {
  const dim3 grid((p.N + Kt::BR - 1) / Kt::BR, p.H, p.B);
  if (p.staged && bwd_staged_smem<Kt>() <= max_smem_optin()) {
    launch_bwd(attention_dkdv_kernel<Kt, true>, bwd_staged_smem<Kt>(), grid, Kt::kThreads, p, stream);
  } else {
    launch_bwd(attention_dkdv_kernel<Kt, false>, Kt::kSmemBytes, grid, Kt::kThreads, p, stream);
  }
}

template <typename Kt>
void launch_dq_kernel(const BwdParams& p, cudaStream_t stream) {
  const dim3 grid((p.N + Kt::BR - 1) / Kt::BR, p.H, p.B);
  if (p.staged && bwd_staged_smem<Kt>() <= max_smem_optin()) {
    launch_bwd(attention_dq_kernel<Kt, true>, bwd_staged_smem<Kt>(), grid, Kt::kThreads, p, stream);
  } else {
    launch_bwd(attention_dq_kernel<Kt, false>, Kt::kSmemBytes, grid, Kt::kThreads, p, stream);
  }
}

}  // namespace deberta_fast
