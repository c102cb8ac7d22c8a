// The small kernels: Delta = rowsum(dO * O) per dtype, and the dropout keep mask (a test hook).
#include "attention_bwd.cuh"
#include "launch.h"

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

}  // namespace deberta_fast
