// Tile shapes of the attention kernels per (dtype, head dim). One place to tune them.
//
// Forward: a CTA owns BM queries (kWarps warps of 16 * MF rows each) and streams BN-key tiles.
// Backward: a CTA owns BR rows (keys for dK/dV, queries for dQ) and streams BC-column tiles.
// float16 / bfloat16 use mma.sync tensor cores; float32 the SIMT path (smaller tiles).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace deberta_fast {

// kWgmma: S = Q K^T and O += P V by warpgroup MMA (csrc/wgmma.cuh) where the build targets sm_90a, else mma.sync.
template <typename T_, int D_, int BM_, int BN_, int kWarps_, bool kQInRegs_, bool kWgmma_ = false>
struct FwdTraits {
  using T = T_;
  static constexpr int D = D_, BM = BM_, BN = BN_, kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int MF = BM / (16 * kWarps);  // 16-row fragments per warp
  static constexpr int NF = BN / 8;
  static constexpr int DF = D / 8;
  static constexpr bool kQInRegs = kQInRegs_;
  static constexpr bool kWgmma = kWgmma_;
  static_assert(MF >= 1 && BM == MF * 16 * kWarps, "BM must be a multiple of 16 * warps");
  static_assert(BN % 16 == 0 && D % 16 == 0, "tiles are built from 16 x 16 blocks");
  static_assert(!kWgmma || (MF == 1 && BN == 64 && D == 64 && kWarps % 4 == 0 && !kQInRegs && sizeof(T) == 2),
                "the wgmma forward: 16-bit types, head dim 64, 64-key tiles, warpgroups of 16-row warps, Q in shared "
                "memory");
  // sQ [BM][D], sK / sV [2][BN][D] (double-buffered), key column terms [2][BN] (float).
  static constexpr int kSmemBytes = (BM * D + 4 * BN * D) * sizeof(T) + 2 * BN * sizeof(float);
  // With staged band slabs, StagedSlabs<T, BM, BN>::kBytes more (attention_common.cuh).
};

// kWgmma: the four (dK/dV) or three (dQ) products by warpgroup MMA where the build targets sm_90a, as FwdTraits'.
template <typename T_, int D_, int BR_, int BC_, int kWarps_, bool kWgmma_ = false>
struct BwdTraits {
  using T = T_;
  static constexpr int D = D_, BR = BR_, BC = BC_, kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int MF = BR / (16 * kWarps);
  static constexpr int NF = BC / 8;
  static constexpr int DF = D / 8;
  static constexpr bool kWgmma = kWgmma_;
  static_assert(MF >= 1 && BR == MF * 16 * kWarps, "BR must be a multiple of 16 * warps");
  static_assert(BC % 16 == 0 && D % 16 == 0, "tiles are built from 16 x 16 blocks");
  static_assert(!kWgmma || (MF == 1 && BR == 64 && BC == 64 && D == 64 && kWarps == 4 && sizeof(T) == 2),
                "the wgmma backward: 16-bit types, head dim 64, 64 x 64 tiles, one warpgroup of 16-row warps");
  // Owned [BR][D] x 2, streamed [2][BC][D] x 2, per-column floats [2][BC] x 4.
  static constexpr int kSmemBytes = (2 * BR * D + 4 * BC * D) * sizeof(T) + 8 * BC * sizeof(float);
};

template <typename T, int D>
struct FwdConfig {  // float16 / bfloat16
  using Traits = FwdTraits<T, D, 128, 64, 8, (D <= 64)>;
};
template <int D>
struct FwdConfig<float, D> {
  using Traits = FwdTraits<float, D, 64, 32, 4, false>;
};

// Opt-in forward tiles for float16 / bfloat16 (DEBERTA_FAST_CUDA_FWD_TILES, attention.cpp), not yet timed with the
// staged band slabs (128 x 32 was, with the gathers, in the sixth GPU run: slower) against FwdConfig's 128 x 64 under
// 8 warps (one CTA per multiprocessor, 16 query rows per warp). ptxas, sm_90, bf16, D 64,
// without dropout, with the staged band slabs: 128 x 32 under 4 warps (32 rows per warp: each K / V fragment read by
// ldmatrix feeds two mma.sync) 238 registers, no spills, 72 KB of shared memory (two CTAs per multiprocessor);
// gathering, 255 and 56 bytes of spills. 64 x 64 under 4 warps (16 rows per warp, two CTAs of 4 warps instead of one
// of 8: their barriers independent) 168 registers, none, 78 KB; gathering 188, none.
template <typename T, int D>
struct Fwd128x32Config {
  using Traits = FwdTraits<T, D, 128, 32, 4, (D <= 64)>;
};
template <typename T, int D>
struct Fwd64x64Config {
  using Traits = FwdTraits<T, D, 64, 64, 4, (D <= 64)>;
};

// Opt-in (DEBERTA_FAST_CUDA_MMA=wgmma), float16 / bfloat16 at head dim 64: FwdConfig's / BwdConfig's tiles with every
// product by wgmma (sm_90a builds); the forward's Q stays in shared memory, the A operand of S = Q K^T.
template <typename T, int D>
struct FwdWgmmaConfig {
  using Traits = FwdTraits<T, D, 128, 64, 8, false, true>;
};

template <typename T, int D>
struct BwdConfig {
  using Traits = BwdTraits<T, D, 64, (D <= 64 ? 64 : 32), 4>;
};
template <typename T, int D>
struct BwdWgmmaConfig {
  using Traits = BwdTraits<T, D, 64, 64, 4, true>;
};
template <int D>
struct BwdConfig<float, D> {
  using Traits = BwdTraits<float, D, 64, (D <= 64 ? 32 : 16), 4>;
};

}  // namespace deberta_fast
