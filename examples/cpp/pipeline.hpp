// The backend-independent half of the C++ pipeline, shared by segment.cpp (AOTInductor) and
// segment_trt.cpp (TensorRT): the bundle prepare.py writes, the PPM/PGM files, and cmpf/pipeline.py's
// steps around the graphs, in its order, for one image at its own size (`cmpf run --no-resize`):
// normalise (CLIP and SAM constants), zero-pad to the size divisibility, warp the SAM copy to S x S,
// run the four image-side graphs, geometric in/out-vocabulary ensemble (cmpf/ensemble.py), upsample
// the masks, semantic scores, and the panoptic merge (cmpf/postprocess.py panoptic_inference).
//
// Tensors are CPU ATen tensors and travel by name, as in Python: a backend is one `RunGraph` that
// takes a graph's named inputs and returns its named outputs. The names and their order come from
// the bundle's graphs.txt, which prepare.py writes from cmpf/spec.py (NCHW, sizes as (H, W)).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <exception>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace cmpf {

using Tensors = std::map<std::string, at::Tensor>;
struct GraphIO {
  std::vector<std::string> inputs, outputs;  // cmpf/spec.py's names, in its order
};
// One graph call: its named inputs (taken from `inputs` by name) -> its named outputs.
using RunGraph = std::function<Tensors(const std::string& graph, const GraphIO& io, const Tensors& inputs)>;
inline const std::vector<std::string> kImageGraphs = {"clip_image_encoder", "sam_image_encoder", "decoder",
                                                      "mask_classifier"};

// What examples/cpp/prepare.py wrote: one vocabulary's text classifier and the run's constants.
struct Bundle {
  int64_t k = 0, s = 0, d = 0;           // classes, synonyms, embedding width
  at::Tensor text, synonyms;             // (K, S, D) float32, (K, S) bool
  at::Tensor seen, is_thing;             // (K,) float32 0/1, (K,) bool
  std::vector<double> clip_mean, clip_std, sam_mean, sam_std;
  int64_t divisibility = 0, sam_size = 0;
  double alpha = 0, beta = 0, object_mask_threshold = 0, overlap_threshold = 0;
  std::vector<std::string> classes;      // display names, class-index order
  std::map<std::string, GraphIO> graphs; // from graphs.txt
};

inline std::vector<double> meta_values(const std::map<std::string, std::vector<double>>& meta,
                                       const std::string& key) {
  auto it = meta.find(key);
  if (it == meta.end() || it->second.empty())
    throw std::runtime_error("meta.txt has no " + key + "; rerun examples/cpp/prepare.py");
  return it->second;
}

inline at::Tensor read_raw(const std::string& path, at::IntArrayRef shape, at::ScalarType dtype) {
  std::ifstream in(path, std::ios::binary);
  at::Tensor t = at::empty(shape, dtype);
  in.read(static_cast<char*>(t.data_ptr()), t.nbytes());
  if (!in) throw std::runtime_error(path + ": missing or shorter than the shape in meta.txt");
  return t;
}

inline std::ifstream open_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open; run examples/cpp/prepare.py first");
  return in;
}

inline Bundle read_bundle(const std::string& dir) {
  std::map<std::string, std::vector<double>> meta;
  std::ifstream in = open_text(dir + "/meta.txt");
  for (std::string line; std::getline(in, line);) {
    std::istringstream words(line);
    std::string key;
    words >> key;
    for (double value; words >> value;) meta[key].push_back(value);
  }
  Bundle b;
  std::vector<double> shape = meta_values(meta, "shape");
  b.k = shape.at(0), b.s = shape.at(1), b.d = shape.at(2);
  b.text = read_raw(dir + "/text_embeddings.f32", {b.k, b.s, b.d}, at::kFloat);
  b.synonyms = read_raw(dir + "/synonym_mask.u8", {b.k, b.s}, at::kByte).to(at::kBool);
  std::vector<double> seen = meta_values(meta, "seen"), things = meta_values(meta, "is_thing");
  b.seen = at::tensor(std::vector<float>(seen.begin(), seen.end()));
  b.is_thing = at::tensor(std::vector<float>(things.begin(), things.end())).to(at::kBool);
  b.clip_mean = meta_values(meta, "clip_mean"), b.clip_std = meta_values(meta, "clip_std");
  b.sam_mean = meta_values(meta, "sam_mean"), b.sam_std = meta_values(meta, "sam_std");
  b.divisibility = meta_values(meta, "divisibility")[0], b.sam_size = meta_values(meta, "sam_size")[0];
  b.alpha = meta_values(meta, "alpha")[0], b.beta = meta_values(meta, "beta")[0];
  b.object_mask_threshold = meta_values(meta, "object_mask_threshold")[0];
  b.overlap_threshold = meta_values(meta, "overlap_threshold")[0];
  if (meta_values(meta, "valid_mask")[0] != 0)
    throw std::runtime_error("ensemble_on_valid_mask is not implemented here");
  std::ifstream names = open_text(dir + "/classes.txt");
  for (std::string line; std::getline(names, line);) b.classes.push_back(line);
  std::ifstream graphs = open_text(dir + "/graphs.txt");
  for (std::string line; std::getline(graphs, line);) {
    std::istringstream words(line);
    std::string graph, side;
    words >> graph >> side;
    std::vector<std::string>& names_of = side == "inputs" ? b.graphs[graph].inputs : b.graphs[graph].outputs;
    for (std::string name; words >> name;) names_of.push_back(name);
  }
  if (int64_t(b.classes.size()) != b.k || b.seen.numel() != b.k || b.is_thing.numel() != b.k)
    throw std::runtime_error(dir + ": classes.txt, seen and is_thing disagree with the shape; rerun prepare.py");
  for (const std::string& graph : kImageGraphs)
    if (!b.graphs.count(graph)) throw std::runtime_error(dir + "/graphs.txt: the export has no graph " + graph);
  return b;
}

// Binary PPM (P6, maxval 255) -> uint8 (3, H, W).
inline at::Tensor read_ppm(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string magic;
  int w = 0, h = 0, maxval = 0;
  in >> magic >> w >> h >> maxval;
  if (!in || magic != "P6" || maxval != 255) throw std::runtime_error(path + ": not a binary 8-bit PPM (P6)");
  in.get();  // the one whitespace after the header
  at::Tensor hwc = at::empty({h, w, 3}, at::kByte);
  in.read(static_cast<char*>(hwc.data_ptr()), hwc.nbytes());
  if (!in) throw std::runtime_error(path + ": truncated");
  return hwc.permute({2, 0, 1}).contiguous();
}

// Binary PGM (P5): 8-bit for maxval <= 255, else 16-bit big-endian (as the format says).
inline void write_pgm(const std::string& path, const at::Tensor& image, int maxval) {
  at::Tensor pixels = image.to(at::kInt).contiguous();
  if (pixels.min().item<int>() < 0 || pixels.max().item<int>() > maxval)
    throw std::runtime_error(path + ": values outside 0.." + std::to_string(maxval));
  std::ofstream out(path, std::ios::binary);
  out << "P5\n" << pixels.size(1) << " " << pixels.size(0) << "\n" << maxval << "\n";
  const int32_t* p = pixels.data_ptr<int32_t>();
  for (int64_t i = 0; i < pixels.numel(); ++i) {
    if (maxval > 255) out.put(char(p[i] >> 8));
    out.put(char(p[i] & 0xff));
  }
  if (!out) throw std::runtime_error(path + ": cannot write");
}

// (x - mean) / std per channel, then zero padding bottom/right to a multiple of `div` (1, 3, Hp, Wp).
inline at::Tensor normalize_pad(const at::Tensor& image, const std::vector<double>& mean,
                                const std::vector<double>& std, int64_t div) {
  at::Tensor m = at::tensor(std::vector<float>(mean.begin(), mean.end())).view({-1, 1, 1});
  at::Tensor s = at::tensor(std::vector<float>(std.begin(), std.end())).view({-1, 1, 1});
  at::Tensor x = (image.to(at::kFloat) - m) / s;
  int64_t h = x.size(1), w = x.size(2);
  int64_t hp = (h + div - 1) / div * div, wp = (w + div - 1) / div * div;
  at::Tensor out = at::zeros({1, 3, hp, wp}, at::kFloat);
  out.index_put_({0, at::indexing::Slice(), at::indexing::Slice(0, h), at::indexing::Slice(0, w)}, x);
  return out;
}

inline at::Tensor bilinear(const at::Tensor& x, int64_t h, int64_t w) {
  return at::upsample_bilinear2d(x, {h, w}, /*align_corners=*/false);
}

// cmpf/ensemble.py geometric_ensemble: (1, Q, K+1) in- and out-of-vocabulary logits -> (Q, K+1)
// log-probabilities, void last.
inline at::Tensor ensemble(const at::Tensor& in_logits, const at::Tensor& out_logits, const Bundle& b) {
  const int64_t k = b.k;
  at::Tensor p_in = in_logits.slice(-1, 0, k).softmax(-1), p_out = out_logits.slice(-1, 0, k).softmax(-1);
  at::Tensor seen_term = (p_in.pow(1 - b.alpha) * p_out.pow(b.alpha)).log() * b.seen;
  at::Tensor unseen_term = (p_in.pow(1 - b.beta) * p_out.pow(b.beta)).log() * (1 - b.seen);
  at::Tensor p_void = in_logits.softmax(-1).slice(-1, k, k + 1);
  at::Tensor probs = at::cat({(seen_term + unseen_term).softmax(-1) * (1.0 - p_void), p_void}, -1);
  return at::log(probs + 1e-8)[0];
}

struct Segment {
  int32_t id;
  int64_t category;  // class index
  bool isthing;
  int64_t area;
};

// cmpf/postprocess.py panoptic_inference: (Q, K+1) log-probs, (Q, H, W) mask logits -> (H, W) int32
// segment ids (0 = void) and the segments, with the official thresholds; stuff of one class is merged.
inline std::pair<at::Tensor, std::vector<Segment>> panoptic_inference(const at::Tensor& mask_cls,
                                                                      const at::Tensor& masks, const Bundle& b) {
  auto [scores, labels] = mask_cls.softmax(-1).max(-1);
  at::Tensor keep = labels.ne(mask_cls.size(-1) - 1).logical_and(scores > b.object_mask_threshold);
  at::Tensor cur_scores = scores.index({keep}), cur_classes = labels.index({keep});
  at::Tensor cur_masks = masks.index({keep}).sigmoid();
  at::Tensor panoptic = at::zeros({masks.size(-2), masks.size(-1)}, at::kInt);
  std::vector<Segment> segments;
  if (cur_masks.size(0) == 0) return {panoptic, segments};
  at::Tensor mask_ids = (cur_scores.view({-1, 1, 1}) * cur_masks).argmax(0);
  std::map<int64_t, int32_t> stuff_ids;
  int32_t current = 0;
  for (int64_t q = 0; q < cur_classes.size(0); ++q) {
    const int64_t pred_class = cur_classes[q].item<int64_t>();
    const bool isthing = b.is_thing[pred_class].item<bool>();
    at::Tensor mask_q = mask_ids == q, kept = cur_masks[q] >= 0.5;
    const int64_t mask_area = mask_q.sum().item<int64_t>(), original_area = kept.sum().item<int64_t>();
    at::Tensor mask = mask_q.logical_and(kept);
    if (mask_area == 0 || original_area == 0 || mask.sum().item<int64_t>() == 0) continue;
    if (double(mask_area) / double(original_area) < b.overlap_threshold) continue;
    if (!isthing) {
      auto merged = stuff_ids.find(pred_class);
      if (merged != stuff_ids.end()) {  // merge stuff regions of one class
        panoptic.masked_fill_(mask, merged->second);
        continue;
      }
      stuff_ids[pred_class] = current + 1;
    }
    current += 1;
    panoptic.masked_fill_(mask, current);
    segments.push_back({current, pred_class, isthing, 0});
  }
  for (Segment& seg : segments) seg.area = (panoptic == seg.id).sum().item<int64_t>();
  return {panoptic, segments};
}

struct Result {
  at::Tensor semantic;  // (K, H, W) float32 class scores; labels = argmax(0)
  at::Tensor panoptic;  // (H, W) int32 segment ids, 0 = void
  std::vector<Segment> segments;
};

// The four image-side graphs and the steps around them, for one (3, H, W) uint8 image.
inline Result segment(const at::Tensor& image, const Bundle& b, const RunGraph& run) {
  const int64_t h = image.size(1), w = image.size(2);
  auto call = [&](const std::string& graph, Tensors& named) {
    for (auto& [name, value] : run(graph, b.graphs.at(graph), named)) named[name] = value;
  };
  // preprocess: the CLIP copy (/div-padded) and the SAM copy (padded alike, then warped to S x S)
  Tensors named{{"text_embeddings", b.text}, {"synonym_mask", b.synonyms}};
  named["pixel_values"] = normalize_pad(image, b.clip_mean, b.clip_std, b.divisibility);
  named["sam_pixel_values"] =
      bilinear(normalize_pad(image, b.sam_mean, b.sam_std, b.divisibility), b.sam_size, b.sam_size);
  call("clip_image_encoder", named);  // res2..res5
  call("sam_image_encoder", named);   // sam_embedding
  call("decoder", named);             // pred_logits (1, Q, K+1), pred_masks (1, Q, H/4, W/4)
  call("mask_classifier", named);     // out_vocab_logits (1, Q, K+1)
  at::Tensor mask_cls = ensemble(named.at("pred_logits"), named.at("out_vocab_logits"), b);
  // postprocess: masks to the padded size, crop, to the image size; scores; panoptic merge
  const at::Tensor& padded = named.at("pixel_values");
  at::Tensor masks = bilinear(named.at("pred_masks")[0].unsqueeze(0), padded.size(2), padded.size(3));
  masks = bilinear(masks.slice(2, 0, h).slice(3, 0, w), h, w)[0];
  at::Tensor semantic = at::einsum("qc,qhw->chw", {mask_cls.softmax(-1).slice(-1, 0, b.k), masks.sigmoid()});
  auto [panoptic, segments] = panoptic_inference(mask_cls, masks, b);
  return {semantic, panoptic, segments};
}

inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// OUT/semantic.pgm (8-bit class index), OUT/scores.f32 ((K, H, W) float32 raw), OUT/panoptic.pgm
// (16-bit segment id, 0 = void), OUT/segments.json ([{id, category_id (class index), name, isthing, area}]).
inline void write_result(const std::string& out, const Result& r, const Bundle& b) {
  write_pgm(out + "/semantic.pgm", r.semantic.argmax(0), 255);
  at::Tensor scores = r.semantic.contiguous();
  std::ofstream(out + "/scores.f32", std::ios::binary)
      .write(static_cast<const char*>(scores.data_ptr()), scores.nbytes());
  write_pgm(out + "/panoptic.pgm", r.panoptic, 65535);
  std::ofstream json(out + "/segments.json");
  json << "[";
  for (size_t i = 0; i < r.segments.size(); ++i) {
    const Segment& s = r.segments[i];
    json << (i ? ",\n " : "") << "{\"id\": " << s.id << ", \"category_id\": " << s.category
         << ", \"name\": " << json_string(b.classes.at(s.category))
         << ", \"isthing\": " << (s.isthing ? "true" : "false") << ", \"area\": " << s.area << "}";
  }
  json << "]\n";
  if (!json) throw std::runtime_error(out + "/segments.json: cannot write");
}

// The whole program around one backend: `load(artifacts, bundle)` returns that backend's RunGraph.
inline int main_with(int argc, char** argv, const std::string& usage,
                     const std::function<RunGraph(const std::string&, const Bundle&, const std::string&)>& load) {
  if (argc != 5 && argc != 6) {
    std::cerr << "usage: " << argv[0] << " " << usage << "\n";
    return 2;
  }
  try {
    Bundle bundle = read_bundle(argv[2]);
    RunGraph run = load(argv[1], bundle, argc == 6 ? argv[5] : "fp32");
    at::Tensor image = read_ppm(argv[3]);
    Result result = segment(image, bundle, run);
    write_result(argv[4], result, bundle);
    std::cout << "semantic " << image.size(1) << "x" << image.size(2) << ", " << bundle.k << " classes, "
              << result.segments.size() << " panoptic segments -> " << argv[4] << "/" << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << std::endl;
    return 1;
  }
  return 0;
}

}  // namespace cmpf
