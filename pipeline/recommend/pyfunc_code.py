"""MLflow "model from code" entry: what ``mlflow.pyfunc.load_model`` runs to build the recommender (no pickle).

See :mod:`pipeline.recommend.pyfunc`; the weights, config and item map come in through ``load_context``.
"""

from mlflow.models import set_model

from pipeline.recommend.pyfunc import RecommenderModel

set_model(RecommenderModel())
