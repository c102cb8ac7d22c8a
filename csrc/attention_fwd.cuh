// Forward of fused disentangled attention (FlashAttention-2 style).
//
// A CTA owns BM queries of one (batch, head); each warp 16 * MF of them. It streams the key tiles
// (cp.async double buffering) and keeps an online softmax in fp32 base 2. Per tile:
//   S = Q K^T (tensor cores: mma.sync, or with Kt::kWgmma in an sm_90a build warpgroup MMA, wgmma.cuh), + position
//   terms, scaled, masked;
//   saturated tiles (every pair clamped to row 2S - 1 or 0) add a per-query c2p value (registers) and a
//   per-key p2c value (shared memory, its global loads issued a tile ahead: ColumnFetch): no gathers;
//   band tiles gather C2P[i, d(i, j)] and P2C[j, d(i, j)] through the index table;
//   O += dropout(P) V (the same instruction as S). Stores O and the row log-sum-exp (natural log).
// The position terms by score_terms.h: the tile kind dispatched once per tile, a band tile's loads issued together.
#pragma once

#include "attention_common.cuh"
#include "kernel_traits.h"
#include "wgmma.cuh"

namespace deberta_fast {

// kDropout: whether p.philox is set (a compile-time switch: the mask's Philox rounds need registers that the
// kernels without dropout, inference and the benchmarks, would otherwise be compiled around). kStaged: p.staged,
// band tiles read C2P / P2C from slabs staged in shared memory a tile ahead (score_terms.h) instead of gathering
// them from global memory.
template <typename Kt, bool kDropout, bool kStaged>
__global__ void __launch_bounds__(Kt::kThreads) attention_fwd_kernel(const FwdParams p) {
  using T = typename Kt::T;
  constexpr int D = Kt::D, BM = Kt::BM, BN = Kt::BN, MF = Kt::MF, NF = Kt::NF, DF = Kt::DF;
  constexpr int kThreads = Kt::kThreads;
  constexpr bool kWgmma = Kt::kWgmma && kWgmmaCompiled;  // else this instantiation runs mma.sync
  using Gemm = KernelGemm<T, D, kWgmma>;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sQ = reinterpret_cast<T*>(smem_raw);  // [BM][D]
  T* sK = sQ + BM * D;                     // [2][BN][D]
  T* sV = sK + 2 * BN * D;                 // [2][BN][D]
  float* sCol = reinterpret_cast<float*>(sV + 2 * BN * D);  // [2][BN]: p2c term of the tile's kind, -inf off keys
  using Slabs = StagedSlabs<T, BM, BN, kThreads>;
  Slabs slabs(sCol + 2 * BN);  // kStaged: the band tiles' staged C2P / P2C

  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;
  const int h = blockIdx.y, b = blockIdx.z;
  const int bh = b * p.H + h;
  const int N = p.N;
  const int i0 = blockIdx.x * BM;
  const int warp_row0 = warp * 16 * MF;

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  const int64_t pos_offset = (static_cast<int64_t>(h) * p.B + b) * N * p.two_s;  // C2P / P2C are [H, B, N, 2S]
  const T* c2p = p.c2p != nullptr ? static_cast<const T*>(p.c2p) + pos_offset : nullptr;
  const T* p2c = p.p2c != nullptr ? static_cast<const T*>(p.p2c) + pos_offset : nullptr;
  const bool has_c2p = c2p != nullptr, has_p2c = p2c != nullptr;
  const bool has_pos = has_c2p || has_p2c;
  const bool has_mask = p.mask != nullptr;
  const float fill = p.masked_zero ? -INFINITY : 0.f;  // score of every key in a fully padded query row

  // Per-row state: rows mf * 16 + g + 8 * hh of this warp.
  float c2p_hi[MF][2], c2p_lo[MF][2], row_max[MF][2], row_sum[MF][2];
  bool row_pad[MF][2];
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int qi = i0 + warp_row0 + mf * 16 + g + 8 * hh;
      c2p_hi[mf][hh] = sat_value(c2p, p.two_s, qi, N, true);
      c2p_lo[mf][hh] = sat_value(c2p, p.two_s, qi, N, false);
      row_pad[mf][hh] = has_mask && qi < N && !is_token(p, b, qi);
      row_max[mf][hh] = -INFINITY;
      row_sum[mf][hh] = 0.f;
    }
  }
  float acc_o[MF][DF][4];
  zero(acc_o);

  const int n_tiles = (N + BN - 1) / BN;
  // Key tiles: K and V by cp.async; each key's column term (the p2c value of the tile's kind, -inf off keys)
  // through registers fetched a tile ahead (ColumnFetch), one key per thread.
  static_assert(BN <= kThreads, "one key column per thread");
  ColumnFetch<T> next;
  auto fetch_keys = [&](int jt) {
    next.fetch(p, b, p2c, jt * BN + threadIdx.x, jt < n_tiles && threadIdx.x < BN,
               tile_mode(p, has_pos, i0, BM, jt * BN, BN));
  };
  auto staged_tile = [&](int jt) {  // kStaged: key tile jt as StagedSlabs sees it
    return StagedTile{jt < n_tiles && tile_mode(p, has_pos, i0, BM, jt * BN, BN) == kBand, i0, jt * BN};
  };
  auto load_tile = [&](int jt) {
    const int buf = jt & 1;
    const int j0 = jt * BN;
    load_tile_async<T, BN, D, kThreads>(sK + buf * BN * D, k, p.k_stride_n, j0, N);
    load_tile_async<T, BN, D, kThreads>(sV + buf * BN * D, v, p.v_stride_n, j0, N);
    if constexpr (kStaged) slabs.stage(p, staged_tile, jt, c2p, p2c);
    if (threadIdx.x < BN) sCol[buf * BN + threadIdx.x] = next.key_term();
    fetch_keys(jt + 1);
  };

  if constexpr (kWgmma) {
    // the descriptors' 128-byte swizzle needs 1024-byte aligned tiles (every tile size is a multiple of 1024)
    if ((smem_u32(smem_raw) & 1023u) != 0) __trap();
  }
  load_tile_async<T, BM, D, kThreads>(sQ, q, p.q_stride_n, i0, N);
  fetch_keys(0);
  if constexpr (kStaged) slabs.prime(p, staged_tile);
  load_tile(0);
  cp_async_commit();

  uint32_t q_frag[Kt::kQInRegs ? MF : 1][Kt::kQInRegs ? D / 16 : 1][4];
  const DropoutKey dkey = load_dropout_key(p);
  const float rescale = kDropout ? 1.f / (1.f - p.dropout_p) : 1.f;
  const uint32_t bh_global = static_cast<uint32_t>(bh + p.bh0);

  for (int jt = 0; jt < n_tiles; ++jt) {
    if (jt + 1 < n_tiles) load_tile(jt + 1);
    cp_async_commit();
    cp_async_wait<1>();
    if constexpr (kWgmma) fence_proxy_async();  // this thread's copies, before the tensor cores read them
    __syncthreads();

    const int buf = jt & 1;
    const int j0 = jt * BN;
    const T* sKb = sK + buf * BN * D;
    const T* sVb = sV + buf * BN * D;
    const float* sColb = sCol + buf * BN;

    float s[MF][NF][4];
    zero(s);
    if constexpr (Kt::kQInRegs) {
      if (jt == 0) WarpGemm<T, D>::template load_a<MF>(q_frag, sQ, warp_row0);
      WarpGemm<T, D>::template nt_areg<MF, NF>(s, q_frag, sKb, 0);
    } else {
      Gemm::template nt<MF, NF>(s, sQ, warp_row0, sKb);
    }

    // Scores in base 2 with position terms and masks.
    const int mode = tile_mode(p, has_pos, i0, BM, j0, BN);
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
          s[mf][nf][e] = x;
        }
      }
    }

    // Online softmax (rows are shared by the four lanes of a quad).
#pragma unroll
    for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float mx = -INFINITY;
#pragma unroll
        for (int nf = 0; nf < NF; ++nf) mx = fmaxf(mx, fmaxf(s[mf][nf][2 * hh], s[mf][nf][2 * hh + 1]));
        mx = quad_max(mx);
        const float m_new = fmaxf(row_max[mf][hh], mx);
        const float m_safe = m_new == -INFINITY ? 0.f : m_new;  // no key seen yet
        const float alpha = exp2f(row_max[mf][hh] - m_safe);
        row_max[mf][hh] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int nf = 0; nf < NF; ++nf) {
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float pr = exp2f(s[mf][nf][2 * hh + c] - m_safe);
            s[mf][nf][2 * hh + c] = pr;
            sum += pr;
          }
        }
        row_sum[mf][hh] = row_sum[mf][hh] * alpha + sum;  // partial over this lane's columns
#pragma unroll
        for (int df = 0; df < DF; ++df) {
          acc_o[mf][df][2 * hh] *= alpha;
          acc_o[mf][df][2 * hh + 1] *= alpha;
        }
      }
    }

    if constexpr (kDropout) {
      for_each_keep<false, MF, NF>(dkey, bh_global, i0 + warp_row0, j0, [&](int mf, int nf, int e, bool keep) {
        s[mf][nf][e] = keep ? s[mf][nf][e] * rescale : 0.f;
      });
    }
    Gemm::template rn<MF, NF>(acc_o, s, sVb);
    if constexpr (kStaged) slabs.advance(p, staged_tile, jt);
    __syncthreads();  // the buffer is refilled by the next iteration's prefetch
  }

  // Epilogue: O = acc / l, LSE = ln(l) + m (natural log); l = 0 only on fully padded rows under masked_zero.
  T* out = static_cast<T*>(p.out) + b * p.o_stride_b + h * p.o_stride_h;
  float* lse = p.lse + static_cast<int64_t>(bh) * N;
#pragma unroll
  for (int mf = 0; mf < MF; ++mf) {
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int qi = i0 + warp_row0 + mf * 16 + g + 8 * hh;
      const float l = quad_sum(row_sum[mf][hh]);
      const float inv = l > 0.f ? 1.f / l : 0.f;
      if (qi < N) {
        T* row = out + qi * p.o_stride_n;
#pragma unroll
        for (int df = 0; df < DF; ++df) {
          store_pair(row + df * 8 + 2 * t, acc_o[mf][df][2 * hh] * inv, acc_o[mf][df][2 * hh + 1] * inv);
        }
        if (t == 0) lse[qi] = l > 0.f ? (row_max[mf][hh] + log2f(l)) * kLn2 : INFINITY;
      }
    }
  }
}

template <typename Kt>
void launch_fwd_kernel(const FwdParams& p, cudaStream_t stream) {
  // Staged slabs where the device's shared memory holds them (bf16 / fp16 at D 128 need 168 KB: sm_90, not sm_80)
  constexpr int staged_smem = Kt::kSmemBytes + StagedSlabs<typename Kt::T, Kt::BM, Kt::BN, Kt::kThreads>::kBytes;
  const bool staged = p.staged && staged_smem <= max_smem_optin();
  auto kernel = p.philox != nullptr
                    ? (staged ? attention_fwd_kernel<Kt, true, true> : attention_fwd_kernel<Kt, true, false>)
                    : (staged ? attention_fwd_kernel<Kt, false, true> : attention_fwd_kernel<Kt, false, false>);
  const int smem = staged ? staged_smem : Kt::kSmemBytes;
  if (smem > 48 * 1024) {
    DF_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  }
  const dim3 grid((p.N + Kt::BM - 1) / Kt::BM, p.H, p.B);
  kernel<<<grid, Kt::kThreads, smem, stream>>>(p);
  DF_CUDA_CHECK(cudaGetLastError());
}

}  // namespace deberta_fast
