FROM ruby:3.3
WORKDIR /usr/src/app
COPY Gemfile Gemfile.lock ./
RUN bundle config set --local without 'development test' && bundle install
COPY . .
ENTRYPOINT bundle exec puma -C config/puma.rb
