#include "parallel/mesh.h"

#include <functional>
#include <stdexcept>

namespace tiller::parallel {

std::string Layout::describe() const {
  std::string out;
  const auto add = [&](const char* name, int size) {
    if (size > 1) out += (out.empty() ? "" : " x ") + std::string(name) + std::to_string(size);
  };
  add("TP", tensor);
  add("CP", context);
  add("EP", expert);
  add("DP", data);
  add("PP", pipeline);
  if (pipeline > 1 && first_stage_layers > 0) {
    out += " (first " + std::to_string(first_stage_layers) + ", last " + std::to_string(last_stage_layers) + " layers)";
  }
  if (out.empty()) out = "one rank";
  if (sequence_parallel && tensor > 1) out += " (SP)";
  return out;
}

void check_layout(const Layout& l, int world_size) {
  const std::pair<const char*, int> sizes[] = {{"tensor", l.tensor},     {"context", l.context}, {"pipeline", l.pipeline},
                                               {"expert", l.expert},     {"data", l.data}};
  for (const auto& [name, size] : sizes) {
    if (size < 1) throw std::invalid_argument(std::string("layout.") + name + ": must be >= 1, got " + std::to_string(size));
  }
  if (l.world() != world_size) {
    throw std::invalid_argument("layout: tensor " + std::to_string(l.tensor) + " x context " + std::to_string(l.context) +
                                " x data " + std::to_string(l.data) + " x pipeline " + std::to_string(l.pipeline) +
                                " = " + std::to_string(l.world()) + " ranks, but the process group has " +
                                std::to_string(world_size));
  }
  const int stage = l.tensor * l.context * l.data;
  if (stage % l.expert != 0) {
    throw std::invalid_argument("layout.expert: " + std::to_string(l.expert) +
                                " must divide tensor x context x data = " + std::to_string(stage) +
                                " (experts fold over the ranks of a pipeline stage)");
  }
}

StageRange stage_range(const Layout& l, int stage, int64_t layers) {
  const int p = l.pipeline;
  if (stage < 0 || stage >= p) throw std::invalid_argument("stage " + std::to_string(stage) + " of " + std::to_string(p));
  if (p > layers) {
    throw std::invalid_argument("layout.pipeline: " + std::to_string(p) + " stages exceed the " + std::to_string(layers) +
                                " decoder layers");
  }
  int64_t first = l.first_stage_layers, last = l.last_stage_layers;
  if ((first > 0) != (last > 0)) {
    throw std::invalid_argument("layout.firstStageLayers: give both firstStageLayers and lastStageLayers, or neither");
  }
  if (first == 0) {
    if (layers % p != 0) {
      throw std::invalid_argument("layout.pipeline: " + std::to_string(p) + " stages do not split the " +
                                  std::to_string(layers) + " decoder layers evenly; set firstStageLayers and lastStageLayers");
    }
    first = last = layers / p;
  }
  const int64_t middle = p - 2, rest = layers - first - last;
  if (p == 1 ? first != layers : middle == 0 ? rest != 0 : (rest < middle || rest % middle != 0)) {
    throw std::invalid_argument("layout.firstStageLayers: first " + std::to_string(first) + " + last " +
                                std::to_string(last) + " layers leave " + std::to_string(rest) + " for " +
                                std::to_string(std::max<int64_t>(middle, 0)) + " middle stages of the " +
                                std::to_string(layers) + " layers (each middle stage needs the same number, at least 1)");
  }
  const int64_t each = middle > 0 ? rest / middle : 0;
  StageRange r;
  r.first = stage == 0;
  r.last = stage == p - 1;
  r.begin = stage == 0 ? 0 : first + each * (stage - 1);
  r.end = r.last ? layers : r.begin + (stage == 0 ? first : each);
  return r;
}

Coordinates coordinates_of(const Layout& l, int rank) {
  Coordinates c;
  c.tensor = rank % l.tensor;
  c.context = (rank / l.tensor) % l.context;
  c.data = (rank / (l.tensor * l.context)) % l.data;
  c.pipeline = rank / (l.tensor * l.context * l.data);
  const int stage_index = rank % (l.tensor * l.context * l.data);
  c.expert = stage_index % l.expert;
  c.expert_data = stage_index / l.expert;
  return c;
}

namespace {

// The ranks whose coordinates agree with `self` wherever `same` says they must.
std::vector<int> members(const Layout& l, const Coordinates& self,
                         const std::function<bool(const Coordinates&, const Coordinates&)>& same) {
  std::vector<int> out;
  for (int r = 0; r < l.world(); ++r) {
    if (same(coordinates_of(l, r), self)) out.push_back(r);
  }
  return out;
}

// A stable name per group: the mesh's generation on the world group, its kind and its lowest rank.
std::string group_name(int generation, const char* kind, const std::vector<int>& ranks) {
  return "mesh" + std::to_string(generation) + "/" + kind + "/" + std::to_string(ranks.front());
}

}  // namespace

std::shared_ptr<Mesh> Mesh::create(const ProcessGroup& world, const Layout& layout) {
  check_layout(layout, world.world_size());
  std::shared_ptr<Mesh> mesh(new Mesh());
  mesh->layout_ = layout;
  mesh->rank_ = world.rank();
  const auto self = coordinates_of(layout, world.rank());
  mesh->coordinates_ = self;
  using C = const Coordinates&;
  // Made in the same order on every rank; each rank belongs to exactly one group of each kind,
  // so the groups of one kind partition the ranks and their connections cannot wait on each other.
  const int generation = world.next_generation();
  const auto make = [&](const char* kind, const std::function<bool(C, C)>& same) {
    const auto ranks = members(layout, self, same);
    return world.subgroup(ranks, group_name(generation, kind, ranks));
  };
  mesh->tensor_ = make("tensor", [](C a, C b) { return a.context == b.context && a.data == b.data && a.pipeline == b.pipeline; });
  mesh->context_ = make("context", [](C a, C b) { return a.tensor == b.tensor && a.data == b.data && a.pipeline == b.pipeline; });
  mesh->data_ = make("data", [](C a, C b) { return a.tensor == b.tensor && a.context == b.context && a.pipeline == b.pipeline; });
  mesh->pipeline_ = make("pipeline", [](C a, C b) { return a.tensor == b.tensor && a.context == b.context && a.data == b.data; });
  mesh->data_context_ = make("data_context", [](C a, C b) { return a.tensor == b.tensor && a.pipeline == b.pipeline; });
  mesh->expert_ = make("expert", [](C a, C b) { return a.expert_data == b.expert_data && a.pipeline == b.pipeline; });
  mesh->expert_data_ = make("expert_data", [](C a, C b) { return a.expert == b.expert && a.pipeline == b.pipeline; });
  mesh->all_ = make("all", [](C, C) { return true; });
  // Only the end stages are members; the middle ones make no group of this kind.
  const int last = layout.pipeline - 1;
  if (layout.pipeline > 1 && (self.pipeline == 0 || self.pipeline == last)) {
    mesh->embedding_ = make("embedding", [last](C a, C b) {
      return a.tensor == b.tensor && a.context == b.context && a.data == b.data && (a.pipeline == 0 || a.pipeline == last);
    });
  }
  return mesh;
}

std::vector<std::pair<std::string, ProcessGroup*>> Mesh::groups() const {
  std::vector<std::pair<std::string, ProcessGroup*>> out{
      {"tensor", tensor_.get()},         {"context", context_.get()}, {"data", data_.get()},
      {"pipeline", pipeline_.get()},     {"expert", expert_.get()},   {"expert_data", expert_data_.get()},
      {"data_context", data_context_.get()}};
  if (embedding_) out.emplace_back("embedding", embedding_.get());
  return out;
}

}  // namespace tiller::parallel
