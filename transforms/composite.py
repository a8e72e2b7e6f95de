"""A composite whose ``expand`` returns a NamedTuple of PCollections, typed for Beam too.

Beam reads a composite's type hints from ``expand``'s annotations: the input hint
(``beam.PCollection[A]``) is checked when the graph is built; an output that is not one
PCollection is ignored, with a warning per application. ``NamedOutputs`` keeps the input
check and drops the output hint quietly, so the NamedTuple annotation serves readers and
static checkers only.
"""

import apache_beam as beam
from apache_beam.typehints.decorators import IOTypeHints, get_type_hints


class NamedOutputs(beam.PTransform):
    """Base of composites that return a NamedTuple of PCollections (Beam's own
    ``RunInference.with_exception_handling`` returns named outputs the same way)."""

    def default_type_hints(self) -> IOTypeHints:
        hints = IOTypeHints.from_callable(self.expand)
        if hints is not None:
            hints = hints._replace(output_types=None).strip_pcoll()
        return get_type_hints(self.__class__).with_defaults(hints)
