// The small kernels: Delta = rowsum(dO * O) per dtype, the dropout keep mask (a test hook), and the probe of
// whether the kernels a device runs were compiled with wgmma.
#include <algorithm>
#include <mutex>

#include "attention_bwd.cuh"
#include "launch.h"
#include "wgmma.cuh"

namespace deberta_fast {

void run_delta(ElemType elem, const DeltaParams& params, cudaStream_t stream) {
  switch (elem) {
    case ElemType::kFloat16:
      launch_delta_kernel<__half>(params, stream);
      break;
    case ElemType::kBFloat16:
      launch_delta_kernel<__nv_bfloat16>(params, stream);
      break;
    default:
      launch_delta_kernel<float>(params, stream);
  }
}

// One thread per (row, column) of a band buffer; the written run of row x (mirror of the kernels' band stores,
// and of the Triton backend's _band_edges_kernel) is c in [lo, hi], c < width.
template <typename T>
__global__ void band_edges_kernel(T* band, int64_t rows, int n, int width, int stride, int r_lo, bool rows_are_queries) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= stride) return;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int x = static_cast<int>(row % n);
    const int lo = rows_are_queries ? x + r_lo - n : r_lo - 1 - x;
    const int hi = min(rows_are_queries ? x + r_lo - 1 : n + r_lo - 2 - x, width - 1);
    if (c < lo || c > hi) band[row * stride + c] = T(0);
  }
}

void run_band_edges(void* band, int elem_bytes, int64_t seqs, int n, int width, int stride, int r_lo,
                    bool rows_are_queries, cudaStream_t stream) {
  const int64_t rows = seqs * n;
  if (rows == 0) return;
  const dim3 grid((stride + 255) / 256, static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  if (elem_bytes == 2) {
    band_edges_kernel<uint16_t><<<grid, 256, 0, stream>>>(static_cast<uint16_t*>(band), rows, n, width, stride, r_lo,
                                                          rows_are_queries);
  } else {
    band_edges_kernel<uint32_t><<<grid, 256, 0, stream>>>(static_cast<uint32_t*>(band), rows, n, width, stride, r_lo,
                                                          rows_are_queries);
  }
  DF_CUDA_CHECK(cudaGetLastError());
}

__global__ void dropout_mask_kernel(const int64_t* philox, float p, int n, uint8_t* keep) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  const int i = blockIdx.y;
  const int bh = blockIdx.z;
  if (j >= n) return;
  const DropoutKey key = make_dropout_key(philox[0], philox[1], p);
  keep[(static_cast<int64_t>(bh) * n + i) * n + j] = dropout_keep(key, bh, i, j) ? 1 : 0;
}

void run_dropout_mask(const int64_t* philox, float p, int bh_count, int n, uint8_t* keep, cudaStream_t stream) {
  const dim3 grid((n + 127) / 128, n, bh_count);
  dropout_mask_kernel<<<grid, 128, 0, stream>>>(philox, p, n, keep);
  DF_CUDA_CHECK(cudaGetLastError());
}

__global__ void wgmma_compiled_kernel(int* out) { *out = kWgmmaCompiled ? 1 : 0; }

// One warpgroup: A and B [64][64] (row-major, global) into the kernels' swizzled tiles; out [64][64] (float) =
// A B^T by WarpgroupGemm64::nt (rn false) or A B by ::rn with A as register fragments (rn true).
template <typename T>
__global__ void __launch_bounds__(128) wgmma_probe_kernel(const T* a, const T* b, float* out, bool rn) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sA = reinterpret_cast<T*>(smem_raw);
  T* sB = sA + 64 * 64;
  if constexpr (kWgmmaCompiled) {
    if ((smem_u32(smem_raw) & 1023u) != 0) __trap();
    load_tile_async<T, 64, 64, 128>(sA, a, 64, 0, 64);
    load_tile_async<T, 64, 64, 128>(sB, b, 64, 0, 64);
    cp_async_commit();
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    float acc[8][4] = {};
    if (rn) {
      float p[8][4];
      for_each_element<1, 8>([&](int, int nf, int e) {
        const TilePlace at = tile_place(lane, 0, nf, e);
        p[nf][e] = ElemTraits<T>::to_float(a[(warp * 16 + at.row) * 64 + at.col]);
      });
      WarpgroupGemm64<T>::rn(acc, p, sB);
    } else {
      WarpgroupGemm64<T>::nt(acc, sA, sB);
    }
    for_each_element<1, 8>([&](int, int nf, int e) {
      const TilePlace at = tile_place(lane, 0, nf, e);
      out[(warp * 16 + at.row) * 64 + at.col] = acc[nf][e];
    });
  }
}

void run_wgmma_probe(ElemType elem, const void* a, const void* b, float* out, bool rn, cudaStream_t stream) {
  constexpr int kSmem = 2 * 64 * 64 * 2;
  if (elem == ElemType::kFloat16) {
    wgmma_probe_kernel<__half><<<1, 128, kSmem, stream>>>(static_cast<const __half*>(a), static_cast<const __half*>(b),
                                                          out, rn);
  } else {
    wgmma_probe_kernel<__nv_bfloat16><<<1, 128, kSmem, stream>>>(static_cast<const __nv_bfloat16*>(a),
                                                                 static_cast<const __nv_bfloat16*>(b), out, rn);
  }
  DF_CUDA_CHECK(cudaGetLastError());
}

bool wgmma_kernels_loaded(int device) {
  static std::mutex lock;
  static int cache[64] = {};  // 1: no, 2: yes
  const std::lock_guard<std::mutex> guard(lock);  // the probe switches the current device
  return once_per_device(cache, device, [](int d) {
    int previous = 0;
    DF_CUDA_CHECK(cudaGetDevice(&previous));
    DF_CUDA_CHECK(cudaSetDevice(d));
    int* flag = nullptr;
    int value = 0;
    DF_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
    wgmma_compiled_kernel<<<1, 1>>>(flag);
    const cudaError_t launched = cudaGetLastError();
    const cudaError_t copied = cudaMemcpy(&value, flag, sizeof(int), cudaMemcpyDeviceToHost);
    DF_CUDA_CHECK(cudaFree(flag));
    DF_CUDA_CHECK(cudaSetDevice(previous));
    DF_CUDA_CHECK(launched);
    DF_CUDA_CHECK(copied);
    return value == 1 ? 2 : 1;
  }) == 2;
}

}  // namespace deberta_fast
