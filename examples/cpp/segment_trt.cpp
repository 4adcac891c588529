// The TensorRT variant of segment.cpp: the same program over the engines of `cmpf build`, through the
// TensorRT 10 C++ runtime API. NEVER COMPILED OR RUN: TensorRT and CUDA are not installed on the
// machines this was written on; it follows the documented API (see README.md).
//
//   usage: cmpf_segment_trt ARTIFACTS BUNDLE IMAGE.ppm OUT_DIR [PRECISION]   (default fp32)
//
// ARTIFACTS holds <graph>.<PRECISION>.engine for clip_image_encoder, sam_image_encoder, decoder and
// mask_classifier (`cmpf build ARTIFACTS [--precision fp16]`); engines are hardware-specific, build
// them on the GPU that runs this. Every graph's I/O is bound by name (the bundle's graphs.txt, from
// cmpf/spec.py), its shapes set per call (the engines' profiles span the spec's dynamic dims), and
// host tensors are copied to and from device buffers on one CUDA stream around enqueueV3. The pre-
// and post-processing are pipeline.hpp's, on the CPU, exactly as in the AOTInductor program.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <memory>
#include <set>

#include "pipeline.hpp"

namespace {

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[TensorRT] " << msg << std::endl;
  }
};

at::ScalarType aten_dtype(nvinfer1::DataType dtype, const std::string& name) {
  switch (dtype) {
    case nvinfer1::DataType::kFLOAT: return at::kFloat;
    case nvinfer1::DataType::kHALF: return at::kHalf;
    case nvinfer1::DataType::kBF16: return at::kBFloat16;
    case nvinfer1::DataType::kINT32: return at::kInt;
    case nvinfer1::DataType::kINT64: return at::kLong;
    case nvinfer1::DataType::kBOOL: return at::kBool;
    case nvinfer1::DataType::kUINT8: return at::kByte;
    case nvinfer1::DataType::kINT8: return at::kChar;
    default: throw std::runtime_error("engine tensor " + name + ": a TensorRT dtype with no ATen equivalent");
  }
}

// Device memory freed with the object, so that an exception between cudaMalloc and the end of a call
// leaks nothing.
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) { check_cuda(cudaMalloc(&ptr, bytes ? bytes : 1), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// One deserialized engine and its execution context; checks at load that its I/O names are the spec's.
class Engine {
 public:
  Engine(nvinfer1::IRuntime& runtime, const std::string& path, const cmpf::GraphIO& io) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(path + ": no engine; build it with `cmpf build` on this GPU");
    std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    engine_.reset(runtime.deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) throw std::runtime_error(path + ": TensorRT could not deserialize it (see its log above; "
                                           "an engine built by another TensorRT version or GPU is refused)");
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw std::runtime_error(path + ": createExecutionContext failed");
    std::set<std::string> inputs, outputs;
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs : outputs).insert(name);
    }
    if (inputs != std::set<std::string>(io.inputs.begin(), io.inputs.end()) ||
        outputs != std::set<std::string>(io.outputs.begin(), io.outputs.end()))
      throw std::runtime_error(path + ": the engine's tensor names are not graphs.txt's (cmpf/spec.py); "
                               "rebuild it from this export");
  }

  cmpf::Tensors run(const cmpf::GraphIO& io, const cmpf::Tensors& named, cudaStream_t stream) {
    std::vector<std::unique_ptr<DeviceBuffer>> buffers;
    std::vector<at::Tensor> hosts;  // the contiguous host inputs, kept until the stream is synchronised
    hosts.reserve(io.inputs.size());
    for (const std::string& name : io.inputs) {
      const at::Tensor& x = hosts.emplace_back(named.at(name).contiguous());
      if (x.scalar_type() != aten_dtype(engine_->getTensorDataType(name.c_str()), name))
        throw std::runtime_error(path_ + ": input " + name + " has another dtype than the engine's");
      nvinfer1::Dims dims{};
      dims.nbDims = int32_t(x.dim());
      for (int64_t i = 0; i < x.dim(); ++i) dims.d[i] = x.size(i);
      if (!context_->setInputShape(name.c_str(), dims))
        throw std::runtime_error(path_ + ": input " + name + "'s shape is outside the engine's profile; rebuild "
                                 "it with `cmpf build --shapes ...`");
      buffers.push_back(std::make_unique<DeviceBuffer>(x.nbytes()));
      check_cuda(cudaMemcpyAsync(buffers.back()->ptr, x.data_ptr(), x.nbytes(), cudaMemcpyHostToDevice, stream),
                 "cudaMemcpyAsync to the device");
      context_->setTensorAddress(name.c_str(), buffers.back()->ptr);
    }
    cmpf::Tensors out;
    for (const std::string& name : io.outputs) {
      nvinfer1::Dims dims = context_->getTensorShape(name.c_str());  // resolved from the input shapes
      std::vector<int64_t> shape(dims.d, dims.d + dims.nbDims);
      for (int64_t n : shape)
        if (n < 0) throw std::runtime_error(path_ + ": output " + name + "'s shape is unresolved (data-dependent)");
      out[name] = at::empty(shape, aten_dtype(engine_->getTensorDataType(name.c_str()), name));
      buffers.push_back(std::make_unique<DeviceBuffer>(out[name].nbytes()));
      context_->setTensorAddress(name.c_str(), buffers.back()->ptr);
    }
    if (!context_->enqueueV3(stream)) throw std::runtime_error(path_ + ": enqueueV3 failed (see the TensorRT log)");
    for (size_t i = 0; i < io.outputs.size(); ++i) {
      at::Tensor& y = out[io.outputs[i]];
      check_cuda(cudaMemcpyAsync(y.data_ptr(), buffers[io.inputs.size() + i]->ptr, y.nbytes(),
                                 cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync to the host");
    }
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    return out;
  }

 private:
  std::string path_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;  // TensorRT 10 objects are released with delete
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
};

// Owns the runtime, the engines (declared after it, so destroyed first) and the stream.
struct TrtGraphs {
  Logger logger;
  std::unique_ptr<nvinfer1::IRuntime> runtime;
  std::map<std::string, std::unique_ptr<Engine>> engines;
  cudaStream_t stream = nullptr;
  ~TrtGraphs() {
    engines.clear();
    if (stream) cudaStreamDestroy(stream);
  }
};

}  // namespace

int main(int argc, char** argv) {
  return cmpf::main_with(argc, argv, "ARTIFACTS BUNDLE IMAGE.ppm OUT_DIR [PRECISION]",
                         [](const std::string& artifacts, const cmpf::Bundle& bundle, const std::string& precision) {
    auto graphs = std::make_shared<TrtGraphs>();
    graphs->runtime.reset(nvinfer1::createInferRuntime(graphs->logger));
    if (!graphs->runtime) throw std::runtime_error("nvinfer1::createInferRuntime failed");
    check_cuda(cudaStreamCreate(&graphs->stream), "cudaStreamCreate");
    for (const std::string& graph : cmpf::kImageGraphs)
      graphs->engines[graph] = std::make_unique<Engine>(*graphs->runtime,
                                                        artifacts + "/" + graph + "." + precision + ".engine",
                                                        bundle.graphs.at(graph));
    return cmpf::RunGraph([graphs](const std::string& graph, const cmpf::GraphIO& io, const cmpf::Tensors& named) {
      return graphs->engines.at(graph)->run(io, named, graphs->stream);
    });
  });
}
